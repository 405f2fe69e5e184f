-- A load balancer in front of a group of media servers (Kamailio's dispatcher module, KEMI names).
--
--   trioproxy run --script examples/routes/lb.lua --dispatcher-list examples/dispatcher.list
--
-- with [dispatcher] ping_interval = 5 (seconds) so OPTIONS probes take a dead server out of the rotation
-- and bring it back when it answers again. New calls go to set 1 by DS_ALG; a server that answers 5xx or
-- does not answer at all is marked inactive and the call moves on to the next one.

local DS_SET = 1
local DS_ALG = 4 -- 0 Call-ID hash, 1 From URI hash, 4 round robin, 8 priority, 9 weight

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then
      KSR.tm.t_relay()
    else
      KSR.sl.sl_send_reply(404, "Not Here")
    end
    return
  end
  if KSR.dispatcher.ds_is_from_list(-1) > 0 then
    -- a request from one of the media servers goes where its Request-URI says
    KSR.tm.t_relay()
    return
  end
  KSR.rr.record_route()
  if KSR.dispatcher.ds_select_dst(DS_SET, DS_ALG) < 0 then
    KSR.sl.sl_send_reply(503, "No Destination Available")
    return
  end
  KSR.tm.t_on_failure("ds_failover")
  KSR.tm.t_set_fr(30000, 2000) -- ring for 30 s; a server that sends nothing in 2 s is dead
  KSR.tm.t_relay()
end

function ds_failover()
  if KSR.tm.t_is_canceled() > 0 then
    return
  end
  if KSR.tm.t_check_status("5[0-9][0-9]") > 0
      or (KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_any_replied() < 0) then
    KSR.dispatcher.ds_mark_dst("ip")
    if KSR.dispatcher.ds_next_dst() > 0 then
      KSR.tm.t_on_failure("ds_failover")
      KSR.tm.t_relay()
    end
  end
end
