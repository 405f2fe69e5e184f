-- Relay every request to its Request-URI, marking each INVITE with the script's version.
-- The hot-reload test writes copies of this file with VERSION replaced (and broken copies).
local VERSION = "@VERSION@"

function ksr_request_route()
  if KSR.is_INVITE() then
    KSR.hdr.append("X-Script-Version: " .. VERSION .. "\r\n")
  end
  KSR.tm.t_relay()
end
