-- SIP phones behind NAT: nathelper fixes the signalling, rtpengine relays the media.
--
--   trioproxy run --listen udp:0.0.0.0:5060 --rtpengine udp:127.0.0.1:22222 --script examples/routes/nat.lua
--
-- A phone is behind NAT when its Contact holds a private address or its Via does not match where the
-- request came from (nat_uac_test 1 + 2 + 16). Then:
--   * its REGISTER keeps the address and port it came from (fix_nated_register): calls to it go there, through
--     the binding its NAT keeps open, whatever its Contact says;
--   * its other requests get ;alias=ip~port~proto on their Contact (set_contact_alias), and in-dialog requests
--     towards it go to that alias (handle_ruri_alias);
--   * a reply from a callee behind NAT (Contact private or not its source: bits 1 + 32) gets the alias too.
-- Media goes through rtpengine when either side is behind NAT (a callee is when the location lookup gives a
-- destination URI, which only fix_nated_register records), with SIP-source-address for the NATed side: the
-- private c= of its SDP is replaced by the address its SIP came from (rtpengine then learns the real port
-- from the first RTP packet).

local FLT_NATS = 5 -- the caller is behind NAT
local FLT_NATD = 6 -- the callee is behind NAT

local COMMON = "replace-origin replace-session-connection"

local function media_flags(nated)
  if nated then
    return COMMON .. " SIP-source-address"
  end
  return COMMON
end

local function with_media()
  return KSR.rtpengine and (KSR.isflagset(FLT_NATS) or KSR.isflagset(FLT_NATD))
end

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.nathelper.nat_uac_test(19) > 0 then
    if KSR.is_REGISTER() then
      KSR.nathelper.fix_nated_register()
    elseif not KSR.is_CANCEL() then
      KSR.nathelper.set_contact_alias()
    end
    KSR.setflag(FLT_NATS)
  end
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then
      if KSR.nathelper.handle_ruri_alias() == 1 then KSR.setflag(FLT_NATD) end
      if KSR.rtpengine then
        -- In-dialog: a BYE deletes the session, a re-INVITE (or an ACK answering a late offer) updates it.
        KSR.rtpengine.rtpengine_manage(media_flags(KSR.isflagset(FLT_NATS)))
      end
      KSR.tm.t_on_reply("nat_reply")
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
    if KSR.registrar.save("location", 0) < 0 then KSR.sl.sl_reply_error() end
    return
  end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  local du = KSR.pv.get("$du")
  if du ~= nil and du ~= "" then KSR.setflag(FLT_NATD) end
  if KSR.is_INVITE() then
    KSR.rr.record_route()
    if with_media() then
      KSR.rtpengine.rtpengine_manage(media_flags(KSR.isflagset(FLT_NATS)))
      KSR.tm.t_on_failure("nat_failure")
    end
  end
  KSR.tm.t_on_reply("nat_reply")
  KSR.tm.t_relay()
end

function nat_reply()
  local nated = KSR.nathelper.nat_uac_test(33) > 0
  if nated then KSR.nathelper.set_contact_alias() end
  if with_media() then
    KSR.rtpengine.rtpengine_manage(media_flags(nated or KSR.isflagset(FLT_NATD)))
  end
end

function nat_failure()
  if KSR.rtpengine then KSR.rtpengine.rtpengine_manage("") end
end
