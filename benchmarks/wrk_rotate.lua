-- wrk script used by benchmarks/run.py: rotate requests over a list of paths and
-- print a machine-readable summary line ("BENCHJSON {...}") from done().
--
-- run.py prepends a generated preamble that defines:
--   PATHS       array of request paths (already URL-encoded)
--   METHOD      "GET" or "POST"
--   BODY        request body or nil
--   HEADERS     table of constant headers
--   TS_HEADER   name of a header to fill with the current unix time, or nil

local n = #PATHS
local i = 0
local cache, cache_ts = {}, -1
local thread_no = 0

function setup(thread)
   -- spread the threads over the identifiers so they do not march in lockstep
   thread:set("offset", thread_no * 7919)
   thread_no = thread_no + 1
end

function init(args)
   i = (offset or 0) % n
end

function request()
   i = i + 1
   if i > n then i = 1 end
   local t = 0
   if TS_HEADER then
      t = os.time()
      if t ~= cache_ts then cache, cache_ts = {}, t end
   end
   local r = cache[i]
   if not r then
      if TS_HEADER then HEADERS[TS_HEADER] = tostring(t) end
      r = wrk.format(METHOD, PATHS[i], HEADERS, BODY)
      cache[i] = r
   end
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"stdev_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, latency.stdev))
end
