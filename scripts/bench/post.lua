-- wrk script: POSTs the real Alertmanager fixture bodies in turn, with the bearer token.
-- BENCH_FIXTURES: directory of *.json bodies; BENCH_TOKEN: the token.
local dir = os.getenv("BENCH_FIXTURES")
local token = os.getenv("BENCH_TOKEN")
local bodies = {}
for _, name in ipairs({"onprem_down-firing.json", "onprem_down-resolved.json",
                       "onprem_overloaded-truncated.json", "onprem_recovered-firing.json"}) do
  local f = assert(io.open(dir .. "/" .. name, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/api/v1/alerts", nil, bodies[i])
end
local non2xx = 0
response = function(status, headers, body)
  if status ~= 202 then non2xx = non2xx + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
