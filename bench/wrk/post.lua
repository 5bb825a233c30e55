-- wrk script: POST one prepared body to every request and report latency percentiles as JSON.
-- Environment: BODY (file holding the request body), CONTENT_TYPE, HEADER_LENGTH (optional: the
-- Inference-Header-Content-Length of a binary v2 body). Non-2xx answers are counted by wrk itself (no
-- response() callback: defining one makes wrk parse every body, which costs the load generator CPU).
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/octet-stream"
local header_length = os.getenv("HEADER_LENGTH")
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "non_2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
