#!/usr/bin/env bash
# Stop laminae's test cluster (tests/cluster/start.sh): exactly the recorded daemon PIDs and
# their direct children (munged under runuser, slurmscriptd, job steps), in reverse start order;
# SIGTERM, then SIGKILL after 10 s. Removes each PID file once its process is gone.
R=${LAMINAE_SLURM_STATE:-/tmp/laminae-slurm}
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$R/pids/$name.pid"; [ -f "$f" ] || continue
  pid=$(cat "$f")
  kids=$(pgrep -P "$pid" 2>/dev/null || true)
  kill $pid $kids 2>/dev/null || true
  for i in $(seq 40); do kill -0 $pid 2>/dev/null || break; sleep 0.25; done
  if kill -0 $pid 2>/dev/null; then kill -9 $pid $kids 2>/dev/null || true; fi
  echo "stopped $name ($pid${kids:+, children $kids})"; rm -f "$f"
done
