-- The route of the browser test: Kamailio's way with WebSocket clients (as in Kamailio's websocket
-- examples): a client that arrived over ws/wss (nat_uac_test bit 64) registers with its source kept
-- (fix_nated_register), its Contact gets an alias in requests and in replies (add_contact_alias), and
-- in-dialog requests towards it go to that alias (handle_ruri_alias, protocols 5 and 6).

local function from_ws()
  return KSR.nathelper.nat_uac_test(64) > 0
end

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  local proto = KSR.kx.get_proto()
  if from_ws() ~= (proto == "ws" or proto == "wss") or KSR.pv.get("$pr") ~= proto then
    KSR.sl.sl_send_reply(500, "Protocol Checks Disagree")
    return
  end
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then
      if from_ws() then KSR.nathelper.add_contact_alias() end
      KSR.nathelper.handle_ruri_alias()
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
  if KSR.is_INVITE() then
    KSR.rr.record_route()
    KSR.tm.t_on_reply("ws_reply")
  end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  KSR.tm.t_relay()
end

function ws_reply()
  if from_ws() then KSR.nathelper.add_contact_alias() end
end
