"""``ksi doctor``: what Slurm's configuration means for ksi on this node (the stop budget)."""

from __future__ import annotations

import math

from ksi.admin.doctor.base import Check, Host
from ksi.cluster.stopping import site_kill_wait
from ksi.host import stopbudget
from ksi.settings import Settings


def check_kill_wait(host: Host, settings: Settings) -> Check:
    """Check that Slurm's KillWait holds KSI_GRACE_PERIOD, this node's teardown and the margin (see stopbudget).

    A stopped run gives its workload what is left of KillWait after the teardown; a KillWait shorter than
    the teardown itself leaves clusters to the epilog.
    """
    name = "KillWait holds the grace period and a teardown"
    seconds, source = site_kill_wait(host.env)
    if seconds is None:
        return Check(name, True, f"no Slurm here ({source}): KSI_GRACE_PERIOD and KSI_TEARDOWN_TIMEOUT apply as set")
    need, need_source = stopbudget.teardown_need(stopbudget.delete_times(settings.state_dir),
                                                 settings.teardown_timeout)
    grace = settings.grace_period
    plan = stopbudget.plan(seconds, "", grace, need, need_source)
    parts = (f"KillWait {seconds} s ({source}) for KSI_GRACE_PERIOD {grace:g} s + a teardown of up to {need:g} s "
             f"({need_source}) + {plan.margin:.1f} s margin")
    if plan.grace >= grace:
        return Check(name, True, parts)
    # budget >= grace + need + MARGIN_BASE + MARGIN_SHARE * budget
    wanted = math.ceil((grace + need + stopbudget.MARGIN_BASE) / (1 - stopbudget.MARGIN_SHARE))
    raise_it = f"ask the site to raise KillWait in slurm.conf to at least {wanted} s"
    if plan.fits:
        return Check(name, False, f"{parts}: a stopped workload gets only {plan.grace:.1f} s of its grace period",
                     f"{raise_it}, or lower KSI_GRACE_PERIOD to {math.floor(plan.grace * 10) / 10:g} s")
    return Check(name, False, f"{parts}: too short for the teardown alone, a stopped run may leave its cluster to "
                 "the epilog", f"{raise_it}; a lower KSI_GRACE_PERIOD cannot help, the teardown alone needs more than "
                 f"the {plan.teardown_by:.1f} s KillWait leaves it")
