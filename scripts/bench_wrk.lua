-- wrk script for scripts/bench_serve.py: replays prepared requests round-robin, prints one JSON line.
-- usage: wrk -t2 -c32 -d10s --timeout 30s -s scripts/bench_wrk.lua http://127.0.0.1:8000 -- MANIFEST
-- MANIFEST lines: METHOD <tab> PATH <tab> CONTENT-TYPE <tab> BODY-FILE
local prepared = {}
local index = 0

function init(args)
  for line in io.lines(args[1]) do
    local method, path, content_type, file = line:match("^(%S+)\t(%S+)\t([^\t]+)\t(.+)$")
    local handle = assert(io.open(file, "rb"))
    local body = handle:read("*a")
    handle:close()
    prepared[#prepared + 1] = wrk.format(method, path, { ["Content-Type"] = content_type }, body)
  end
  index = math.random(#prepared)  -- threads start at different requests
end

function request()
  index = index % #prepared + 1
  return prepared[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
