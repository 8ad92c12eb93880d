-- wrk script for the inbound benchmark: POSTs messaging-service inbound SMS webhooks, each with
-- its own `messaging_provider_id` (a redelivery would be answered without storing anything), and
-- prints the same summary line as the kit's post.lua.
local counter = 0
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local body = string.format(
    '{"from":"+18045551234","to":"+12016661234","type":"sms","messaging_provider_id":"bench-%s-%d","body":"text message","attachments":null,"timestamp":"2024-11-01T14:00:00Z"}',
    prefix, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f non2xx=%d sockerr=%d requests=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end
