-- Browser phones (WebRTC) and plain SIP phones on one proxy, with rtpengine bridging their media.
--
--   trioproxy run --listen udp:127.0.0.1:5060 --listen ws:127.0.0.1:8080 --listen wss:127.0.0.1:8443 \
--                 --tls-cert cert.pem --tls-key key.pem --rtpengine udp:127.0.0.1:22222 \
--                 --script examples/routes/webrtc.lua
--
-- Browsers (JsSIP, SIP.js) register over WSS or WS; SIP phones over UDP (or TCP, TLS). Anyone calls anyone
-- registered here. Every call with SDP goes through rtpengine, which gives each side the media it speaks:
--   * towards a browser: UDP/TLS/RTP/SAVPF (DTLS-SRTP), ICE (rtpengine's own candidates), rtcp-mux, a=mid;
--   * towards a SIP phone: plain RTP/AVP, no ICE, RTCP on its own port.
-- The SDP of a request is shaped for where it goes (its destination URI after the location lookup, or after
-- handle_ruri_alias for in-dialog requests: transport=ws/wss means a browser); the SDP of a reply is shaped
-- for the caller (flag FLT_SRC_WS: the request came over ws/wss). BYE, CANCEL and a failed call delete the
-- rtpengine session.
--
-- Browsers are reached over their WebSocket connection: REGISTER keeps the source (fix_nated_register), and
-- Contacts of requests and replies from a browser get ;alias=ip~port~proto (add_contact_alias) so that
-- in-dialog requests find their way back (handle_ruri_alias). One rtpengine session per call: a user with
-- several registered devices rings the first (highest q) with media shaped for it and the others with the
-- same SDP; register browsers and desk phones as different users, or use one kind of device per user.

local FLT_SRC_WS = 1 -- the request came from a browser (ws/wss)
local FLT_DST_WS = 2 -- the request goes to a browser (for routes added after media())

local COMMON = "replace-origin replace-session-connection"
local TO_BROWSER = COMMON .. " ICE=force UDP/TLS/RTP/SAVPF SDES-off rtcp-mux-require generate-mid"
local TO_PHONE = COMMON .. " ICE=remove RTP/AVP rtcp-mux-demux"

local function from_ws()
  return KSR.nathelper.nat_uac_test(64) > 0
end

local function is_ws_uri(uri)
  return uri ~= nil and (string.find(uri, ";transport=ws", 1, true) ~= nil)
end

-- Where the request goes now ($du, else the R-URI): a browser when its transport is ws or wss.
local function to_ws()
  local du = KSR.pv.get("$du")
  if du ~= nil and du ~= "" then
    return is_ws_uri(du)
  end
  return is_ws_uri(KSR.pv.get("$ru"))
end

-- The request's SDP offer (or a BYE's delete), shaped for its destination; replies come back through
-- media_reply, failures through media_failure.
local function media()
  if not KSR.rtpengine then
    return
  end
  if from_ws() then KSR.setflag(FLT_SRC_WS) end
  local flags = TO_PHONE
  if to_ws() then
    KSR.setflag(FLT_DST_WS)
    flags = TO_BROWSER
  end
  KSR.rtpengine.rtpengine_manage(flags)
  if KSR.is_INVITE() or KSR.is_UPDATE() then
    KSR.tm.t_on_failure("media_failure")
  end
end

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.is_CANCEL() then
    -- the 487 of the INVITE deletes the session (media_reply)
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then
      if from_ws() then KSR.nathelper.add_contact_alias() end
      KSR.nathelper.handle_ruri_alias()
      KSR.tm.t_on_reply("media_reply")
      media()
      KSR.tm.t_relay()
      return
    end
    if KSR.is_ACK() then
      if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
      return
    end
    KSR.sl.sl_send_reply(404, "Not here")
    return
  end
  if KSR.is_REGISTER() then
    if from_ws() then KSR.nathelper.fix_nated_register() end
    if KSR.registrar.save("location", 0) < 0 then KSR.sl.sl_reply_error() end
    return
  end
  if from_ws() then KSR.nathelper.add_contact_alias() end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  if KSR.is_INVITE() then
    KSR.rr.record_route()
  end
  KSR.tm.t_on_reply("media_reply")
  media()
  KSR.tm.t_relay()
end

-- A reply: its Contact gets the alias when it came from a browser; its SDP answer is shaped for the caller.
function media_reply()
  if from_ws() then KSR.nathelper.add_contact_alias() end
  if not KSR.rtpengine then
    return
  end
  if KSR.isflagset(FLT_SRC_WS) then
    KSR.rtpengine.rtpengine_manage(TO_BROWSER)
  else
    KSR.rtpengine.rtpengine_manage(TO_PHONE)
  end
end

function media_failure()
  if KSR.rtpengine then KSR.rtpengine.rtpengine_manage("") end
end
