-- trioproxy default routing: a registrar plus a stateful proxy for the local domain.
--
-- Request route: sanity checks, in-dialog requests by their route set, CANCEL and retransmissions,
-- REGISTER to the location table, calls to registered users (404 when none), everything else relayed.
-- A failure route tries the next contacts when a call is busy or unanswered.

local MAX_HOPS = 10
local FLT_NATS = 5       -- message flag: the caller is behind NAT

local function relay()
  if KSR.tm.t_relay() < 0 then
    KSR.sl.sl_reply_error()
  end
  KSR.x.exit()
end

local function request_checks()
  if KSR.maxfwd.process_maxfwd(MAX_HOPS) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    KSR.x.exit()
  end
  if KSR.sanity.sanity_check(17895, 7) < 0 then
    KSR.err("malformed request from " .. KSR.kx.get_srcip() .. ":" .. KSR.kx.get_srcport())
    KSR.x.exit()
  end
end

local function nat_detect()
  KSR.force_rport()
  if KSR.nathelper.nat_uac_test(19) > 0 then
    if KSR.is_REGISTER() then
      KSR.nathelper.fix_nated_register()
    elseif KSR.siputils.is_first_hop() > 0 then
      KSR.nathelper.set_contact_alias()
    end
    KSR.setflag(FLT_NATS)
  end
end

local function within_dialog()
  if KSR.siputils.has_totag() < 0 then return end
  if KSR.rr.loose_route() > 0 then
    if KSR.is_BYE() then
      KSR.info("call ended: " .. KSR.kx.get_callid())
    end
    KSR.nathelper.handle_ruri_alias()
    relay()
  end
  if not KSR.is_myself_ruri() then
    -- no route set (the UA ignored Record-Route): the Request-URI names the peer, so relay to it
    relay()
  end
  if KSR.is_ACK() then
    -- an ACK for a 2xx without a route set: relay it if a transaction knows it, else drop it
    if KSR.tm.t_check_trans() > 0 then relay() end
    KSR.x.exit()
  end
  KSR.sl.sl_send_reply(404, "Not here")
  KSR.x.exit()
end

local function registrar()
  if not KSR.is_REGISTER() then return end
  if KSR.registrar.save("location", 0) < 0 then
    KSR.sl.sl_reply_error()
  end
  KSR.x.exit()
end

local function location()
  local rc = KSR.registrar.lookup("location")
  if rc < 0 then
    KSR.tm.t_newtran()
    if rc == -1 or rc == -3 then
      KSR.sl.send_reply(404, "Not Found")
    else
      KSR.sl.send_reply(405, "Method Not Allowed")
    end
    KSR.x.exit()
  end
  KSR.tm.t_load_contacts()
  KSR.tm.t_next_contacts()
end

function ksr_request_route()
  request_checks()
  nat_detect()

  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then relay() end
    return
  end

  within_dialog()

  if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
    KSR.sl.sl_send_reply(200, "Keepalive")
    KSR.x.exit()
  end

  KSR.hdr.remove("Route")
  if KSR.is_method_in("IS") then
    KSR.rr.record_route()
  end

  registrar()

  if KSR.corex.has_ruri_user() < 0 then
    KSR.sl.sl_send_reply(484, "Address Incomplete")
    KSR.x.exit()
  end

  if KSR.is_myself_ruri() then
    location()
  end

  if KSR.is_INVITE() then
    KSR.tm.t_on_failure("failure_next_contact")
    KSR.tm.t_on_branch("branch_nat")
  end
  relay()
end

function branch_nat()
  KSR.dbg("new branch to " .. KSR.kx.get_ruri())
end

function failure_next_contact()
  if KSR.tm.t_is_canceled() > 0 then return end
  -- busy or no answer: try the next group of contacts, if any
  if KSR.tm.t_check_status("486|408") > 0 or KSR.tm.t_branch_timeout() > 0 then
    if KSR.tm.t_next_contacts() > 0 then
      KSR.tm.t_on_failure("failure_next_contact")
      relay()
    end
  end
end
