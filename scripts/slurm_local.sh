#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (for tests/test_slurm.py and CI): start | stop | status.
#
#   sudo bash scripts/slurm_local.sh start    # installs munge + slurm from apt if missing, starts them
#   pytest -q tests/test_slurm.py             # sbatch now submits to this machine
#   sudo bash scripts/slurm_local.sh stop     # stops what `start` started
#
# One node (this host, all its CPUs and memory), one partition `debug`, no accounting (sacct answers
# that it is disabled), processes tracked by /proc (no cgroups needed, so it runs in containers). The
# daemons run as root without systemd; their logs, state and pid files are in $DT_EVA_SLURM_DIR
# (default /tmp/dt-eva-slurm). `start` is idempotent: a daemon that is up is left alone. It writes
# /etc/slurm/slurm.conf (where every Slurm command looks), and refuses to replace one it did not write.
set -euo pipefail

DIR=${DT_EVA_SLURM_DIR:-/tmp/dt-eva-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by dt-eva scripts/slurm_local.sh"
PACKAGES="slurmctld slurmd slurm-client munge"

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run it as root (sudo bash $0 $1): it installs packages and starts daemons as root"
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "slurmctld/slurmd/munged are missing and there is no apt-get; install Slurm and MUNGE"
  say "installing $PACKAGES (apt-get)"
  # Never let package scripts start daemons through an init system that is not there.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES >"$DIR/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$DIR/apt.log" 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES >>"$DIR/apt.log" 2>&1 \
      || die "apt-get install $PACKAGES failed; see $DIR/apt.log"
  fi
}

write_conf() {
  local host node
  host=$(hostname -s)
  # The node line as slurmd sees this machine (CPUs, sockets, cores, memory), so that it is never drained
  # for having less than its configuration says.
  node=$(slurmd -C | head -n 1)
  [[ $node == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script (a real cluster's?); move it away to use a local cluster"
  fi
  mkdir -p /etc/slurm "$DIR/ctld" "$DIR/d"
  cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=dt-eva-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# A cancelled job gets SIGTERM, then SIGKILL this many seconds later (time to save a checkpoint).
KillWait=30
MinJobAge=300
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

pidfile() {  # pidfile <daemon>: munged runs as user munge and keeps its pid file where that user may write
  if [ "$1" = munged ]; then echo /run/munge/munged.pid; else echo "$DIR/$1.pid"; fi
}

alive() {  # alive <pid file>
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_up() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_up; then say "munged: already running"; return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged 2>>"$DIR/munged.err" || \
    die "munged did not start; see $DIR/munged.err"
  echo munged >> "$DIR/started"
  say "munged: started (pid $(cat /run/munge/munged.pid))"
}

start_daemon() {  # start_daemon <slurmctld|slurmd>
  local name=$1
  if alive "$DIR/$name.pid"; then say "$name: already running (pid $(cat "$DIR/$name.pid"))"; return; fi
  "/usr/sbin/$name" || die "$name did not start; see $DIR/$name.log"
  for _ in $(seq 50); do alive "$DIR/$name.pid" && break; sleep 0.1; done
  alive "$DIR/$name.pid" || die "$name did not start; see $DIR/$name.log"
  echo "$name" >> "$DIR/started"
  say "$name: started (pid $(cat "$DIR/$name.pid"), log $DIR/$name.log)"
}

wait_idle() {
  local state=""
  for _ in $(seq 300); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
    case $state in idle|mixed|allocated) say "node $(hostname -s): $state; sbatch submits here"; return;; esac
    sleep 0.1
  done
  die "the node is not idle after 30 s (sinfo says '${state:-nothing}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
}

start() {
  need_root start
  mkdir -p "$DIR"
  install_packages
  write_conf
  start_munge
  start_daemon slurmctld
  start_daemon slurmd
  wait_idle
}

stop_pid() {  # stop_pid <name> <pid file>
  alive "$2" || return 0
  local pid; pid=$(cat "$2")
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { say "$1: stopped (pid $pid)"; return; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  say "$1: killed (pid $pid)"
}

stop() {
  need_root stop
  [ -f "$DIR/started" ] || { say "nothing to stop (no $DIR/started)"; return; }
  if alive "$DIR/slurmctld.pid"; then
    scancel --full --quiet --user=root 2>/dev/null || true  # no job outlives the cluster
    for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  for name in slurmd slurmctld munged; do
    if grep -qx $name "$DIR/started"; then stop_pid $name "$(pidfile $name)"; fi
  done
  rm -f "$DIR/started"
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if alive "$(pidfile $name)"; then say "$name: running (pid $(cat "$(pidfile $name)"))"; else say "$name: not running"; fi
  done
  command -v sinfo >/dev/null && sinfo -N 2>/dev/null || true
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: bash $0 start|stop|status" ;;
esac
