#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (Debian/Ubuntu, no systemd), for the
# Slurm test (tests/test_cluster.py) and for trying profiles/slurm by hand:
#   .ci/slurm_start.sh          # then: sinfo; snakemake --profile profiles/slurm ...
# Needs root and the Debian packages munge slurmctld slurmd slurm-client (.ci/run installs
# them). Writes /etc/slurm/slurm.conf (one node, this host, all its CPUs and most of its
# memory; one default partition "debug"; no accounting, no cgroups), starts munged,
# slurmctld and slurmd by hand and waits until the node is idle. Does nothing when a
# cluster already answers. Exits non-zero with one line on stderr when it cannot.
set -euo pipefail
fail() { echo "slurm_start: $*" >&2; exit 1; }

if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
  exit 0
fi
[ "$(id -u)" = 0 ] || fail "needs root to write /etc/slurm and start the daemons"
for tool in munged slurmctld slurmd sinfo sbatch squeue; do
  command -v "$tool" >/dev/null || fail "$tool not found (install munge slurmctld slurmd slurm-client)"
done

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=class2d-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

# munge: a key, then the daemon (as root it needs --force)
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chmod 600 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  chown -R root:root /etc/munge /var/lib/munge /var/log/munge /run/munge
  munged --force || fail "munged did not start"
fi

[ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null \
  || slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
[ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null \
  || slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"

for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) exit 0 ;;
    down*|drain*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
fail "node $host not idle after 60 s (sinfo: ${state:-no answer}); see /var/log/slurm/"
