#!/usr/bin/env bash
# laminae's test cluster: a real single-node SLURM (Debian's packages: SLURM 22.05 on Debian 12)
# on localhost, started and stopped by tests/test_slurm.py through tests/cluster/harness.py.
# Run as root. Installs the packages with apt-get when missing, writes /etc/slurm/slurm.conf
# (and gres.conf, slurmdbd.conf), starts munged, mariadbd + slurmdbd (so sacct works, which
# snakemake-executor-plugin-slurm uses), slurmctld and slurmd, each in its own session, and
# records every daemon's PID in $LAMINAE_SLURM_STATE/pids (default /tmp/laminae-slurm); stop.sh
# stops exactly those. One fake GPU (gres gpu:fake:1, a char device) lets gpu=1 jobs schedule.
#   ACCT=slurmdbd (default) | none      FAKE_GPU=1 (default) | 0
# Exit 2: the packages are missing and cannot be installed (the harness skips); 1: a daemon did
# not come up (the harness fails, with this script's output and the daemon's log).
set -euo pipefail
ACCT=${ACCT:-slurmdbd}
FAKE_GPU=${FAKE_GPU:-1}
R=${LAMINAE_SLURM_STATE:-/tmp/laminae-slurm}
mkdir -p "$R/pids" "$R/log"

export DEBIAN_FRONTEND=noninteractive
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = slurmdbd ] && PKGS="$PKGS slurmdbd mariadb-server"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  command -v apt-get >/dev/null || { echo "SLURM's packages ($PKGS) are missing and there is no apt-get"; exit 2; }
  { apt-get update -q && apt-get install -y -q --no-install-recommends $PKGS; } > "$R/log/apt.out" 2>&1 \
    || { echo "apt-get could not install $PKGS: $(tail -n 1 "$R/log/apt.out")"; exit 2; }
fi

fail() {  # fail <daemon> <what>: say which daemon did not come up, with its log
  echo "$1 did not come up ($2); its output:"; tail -n 20 "$R/log/$1.out" 2>/dev/null || true
  exit 1
}

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge && chmod 0755 /run/munge

# ---------------- slurm.conf ----------------
if [ "$ACCT" = slurmdbd ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
if [ "$FAKE_GPU" = 1 ]; then
  GRES_TYPES="GresTypes=gpu"; NODE_GRES="Gres=gpu:fake:1"
  [ -e /dev/fakegpu0 ] || mknod /dev/fakegpu0 c 1 3      # same major/minor as /dev/null
  cat > /etc/slurm/gres.conf <<'EOF'
# fake GPU: GPU gres needs a File= (file-less GPUs are dropped by slurmd)
AutoDetect=off
Name=gpu Type=fake File=/dev/fakegpu0
EOF
else
  GRES_TYPES=""; NODE_GRES=""; rm -f /etc/slurm/gres.conf
fi
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
$GRES_TYPES
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
$ACCT_LINES
MinJobAge=300
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 )) $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

start() {  # start <name> <cmd...> : foreground daemon in its own session, PID recorded
  local name=$1; shift
  setsid nohup "$@" > "$R/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$R/pids/$name.pid"
}

# ---------------- munge (must run as user munge; as root it rejects /var/lib/munge ownership)
start munged runuser -u munge -- /usr/sbin/munged -F
for i in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
munge -n | unmunge >/dev/null 2>&1 || fail munged "munge -n | unmunge"

# ---------------- accounting database
if [ "$ACCT" = slurmdbd ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  start mariadbd /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1
  for i in $(seq 60); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  mariadb -e 'select 1' >/dev/null 2>&1 || fail mariadbd "mariadb -e 'select 1'"
  mariadb <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
  cat > /etc/slurm/slurmdbd.conf <<'EOF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  start slurmdbd /usr/sbin/slurmdbd -D
  for i in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n list cluster >/dev/null 2>&1 || fail slurmdbd 'sacctmgr list cluster'
  sacctmgr -i add cluster localcluster >/dev/null || true
  sacctmgr -i add account research Description=test Organization=local >/dev/null || true
  sacctmgr -i add user root Account=research DefaultAccount=research >/dev/null || true
fi

# ---------------- controller + compute daemon
start slurmctld /usr/sbin/slurmctld -D
for i in $(seq 30); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping 2>/dev/null | grep -q UP || fail slurmctld 'scontrol ping'
# hostname is not "localhost", so tell slurmd which NodeName it is
start slurmd /usr/sbin/slurmd -D -N localhost
for i in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 0.5; done
sinfo -h -o %T 2>/dev/null | grep -q idle || fail slurmd 'sinfo: node idle'
sinfo
echo "PIDs:"; for f in "$R"/pids/*.pid; do echo "  $(basename "$f" .pid) $(cat "$f")"; done
