-- wrk script for the callbacks benchmark (benches/cpu_per_message.sh TARGET=native|callbacks):
-- POSTs native sends (`/v1/messages`); with CALLBACK_URL set, each names it as its
-- `status_callback`. Prints the same summary line as the kit's post.lua.
local callback = os.getenv("CALLBACK_URL")
local extra = callback and string.format(',"status_callback":"%s"', callback) or ""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"channel":"sms","from":"+12016661234","to":"+18045551234","body":"text message"' .. extra .. '}'

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f non2xx=%d sockerr=%d requests=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end
