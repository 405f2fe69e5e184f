-- scripts/bench route script, the same file for trioproxy and for Kamailio (app_lua, KEMI).
-- scripts/bench replaces the @...@ markers before loading it: @MODE@ is "fixed" (every call to the fixed
-- next hop @UAS1@), "lookup" (calls to registered users, found by a registrar lookup) or "fork" (every
-- call forked in parallel to @UAS1@ and @UAS2@; the first 2xx cancels the other branch).
-- Every mode: Max-Forwards, sanity checks, in-dialog requests by their route set, Record-Route on
-- INVITE, REGISTER saved to the location table.

local MODE = "@MODE@"
local NEXT_HOP = "sip:@UAS1@"
local FORK_A = "sip:bench@@UAS1@"
local FORK_B = "sip:bench@@UAS2@"

local function relay()
  if KSR.tm.t_relay() < 0 then
    KSR.sl.sl_reply_error()
  end
end

local function within_dialog()
  if KSR.rr.loose_route() > 0 then
    relay()
    return
  end
  if KSR.is_ACK() then
    if KSR.tm.t_check_trans() > 0 then relay() end
    return
  end
  KSR.sl.sl_send_reply(404, "Not here")
end

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.sanity.sanity_check(17895, 7) < 0 then
    return
  end
  if KSR.siputils.has_totag() > 0 then
    within_dialog()
    return
  end
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then relay() end
    return
  end
  if KSR.is_REGISTER() then
    if KSR.registrar.save("location", 0) < 0 then
      KSR.sl.sl_reply_error()
    end
    return
  end
  if KSR.is_INVITE() then
    KSR.rr.record_route()
  end
  if MODE == "fixed" then
    KSR.setdsturi(NEXT_HOP)
  elseif MODE == "fork" then
    KSR.seturi(FORK_B)
    KSR.corex.append_branch()
    KSR.seturi(FORK_A)
  elseif KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  relay()
end
