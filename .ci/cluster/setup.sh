#!/usr/bin/env bash
# A one-node SLURM cluster with accounting and an MLflow server on PostgreSQL, on this machine,
# from Debian 12's packages, as root, without systemd. What the cluster tests (tests/cluster)
# use, and a recipe for trying the `hydra/launcher=slurm` path by hand.
#
#   .ci/cluster/setup.sh install         install the Debian packages that are missing
#   .ci/cluster/setup.sh start STATE     install if needed, then start everything (~20 s)
#   .ci/cluster/setup.sh stop STATE      stop what `start STATE` started, by its PIDs
#
# STATE is a folder of this cluster's own: pid files, logs, SLURM's state and spool, the
# artifacts of the MLflow server, and `STATE/env`, which tells what `start` set up:
#   MTL_PARTITION   the SLURM partition (hydra.launcher.partition)
#   MTL_TRACKING_URI  http://127.0.0.1:<port>, the MLflow server (tracking.uri)
#   MTL_BACKEND_URI postgresql+psycopg2://..., the server's store
#
# What runs (each started in its own session, its PID in STATE/pids/<name>.pid):
#   munged     as the munge user (the key /etc/munge/munge.key is made by the package)
#   mariadbd   as the mysql user, its own data dir in STATE, no network (slurmdbd's store;
#              on the default socket /run/mysqld/mysqld.sock, the one slurmdbd reaches)
#   slurmdbd, slurmctld, slurmd   as root; config in /etc/slurm (slurm.conf, slurmdbd.conf)
#   postgres   Debian's cluster (pg_ctlcluster), unless it was already running
#   mlflow server --backend-store-uri postgresql+psycopg2://... --serve-artifacts
#              (plain postgresql:// picks SQLAlchemy's default psycopg driver, which is not
#              installed; psycopg2-binary is, through the project's dev extra)
#
# Settings (environment): MTL_MLFLOW_PORT (5000), MTL_PYTHON (the repo's .venv python, else
# python3: needs mlflow and psycopg2), MTL_SLURM_CPUS (the CPUs SLURM hands out; nproc),
# MTL_PARTITION (cpu), MTL_PG_DB (mtl_mlflow: dropped and made anew by start),
# MTL_INSTALL_LOCK (/run/lock/mtl-cluster-install.lock: `start` waits while an `install`,
# e.g. the one .ci/run starts in the background, holds it).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server postgresql)
LOCK=${MTL_INSTALL_LOCK:-/run/lock/mtl-cluster-install.lock}
PORT=${MTL_MLFLOW_PORT:-5000}
PARTITION=${MTL_PARTITION:-cpu}
PG_DB=${MTL_PG_DB:-mtl_mlflow}
PG_USER=mtl
PG_PASS=mtl
if [ -n "${MTL_PYTHON:-}" ]; then PYTHON=$MTL_PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python
else PYTHON=python3; fi

say() { echo "setup.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

missing_packages() {
    local p out=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
    done
    echo "${out[@]}"
}

cmd_install() {
    [ "$(id -u)" = 0 ] || die "must run as root (apt-get, daemons)"
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock 9  # one install at a time; `start` waits here for a background install
    local t0 missing
    t0=$(now)
    missing=$(missing_packages)
    if [ -z "$missing" ]; then say "packages already installed"; return 0; fi
    say "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt/dpkg rather than fail on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
    missing=$(missing_packages)
    [ -z "$missing" ] || die "still missing after apt-get install: $missing"
    say "installed in $(elapsed "$t0") s"
}

# --- helpers for daemons --------------------------------------------------------------------

# spawn NAME CMD...: CMD in its own session (setsid), output in STATE/logs/NAME.log, its PID in
# STATE/pids/NAME.pid. CMD must stay in the foreground (no daemonizing): its PID is the one kept.
spawn() {
    local name=$1; shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
    stat_field $! 22 >"$STATE/pids/$name.start"
    echo "$name" >>"$STATE/pids/order"
}

# Field N of /proc/PID/stat after the command name (3: state, 22: start time in ticks).
stat_field() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f$(( $2 - 2 )); }
alive() {  # alive PID: running, not a zombie
    [ -n "${1:-}" ] && [ -e "/proc/$1" ] && [ "$(stat_field "$1" 3)" != Z ]
}
# pid_of NAME: the PID started as NAME, if it is still that process (same start time; a PID
# reused since, e.g. after a reboot, is not returned).
pid_of() {
    local pid
    pid=$(cat "$STATE/pids/$1.pid" 2>/dev/null) || return 0
    [ "$(stat_field "$pid" 22)" = "$(cat "$STATE/pids/$1.start" 2>/dev/null)" ] && echo "$pid"
    return 0
}

# wait_for NAME SECONDS TEST...: until TEST succeeds; fails at once (with NAME's log) when
# NAME's process has exited, or after SECONDS.
wait_for() {
    local name=$1 timeout=$2; shift 2
    local deadline=$(( $(date +%s) + timeout )) pid
    pid=$(pid_of "$name")
    until "$@" >/dev/null 2>&1; do
        if [ -n "$pid" ] && ! alive "$pid"; then
            say "$name exited during start-up; its log ($STATE/logs/$name.log):"
            tail -n 30 "$STATE/logs/$name.log" >&2 || true
            exit 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "$name not ready in $timeout s; its log:"
            tail -n 30 "$STATE/logs/$name.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

http_ok() { "$PYTHON" -c "import sys, urllib.request as u; sys.exit(u.urlopen(sys.argv[1], timeout=2).status != 200)" "$1"; }

# --- start ----------------------------------------------------------------------------------

start_munge() {
    if alive "$(cat /run/munge/munged.pid 2>/dev/null)"; then
        say "munged already running: using it"; return
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key; }
    spawn munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
    wait_for munged 10 bash -c 'munge -n </dev/null | unmunge'
}

start_mariadb() {
    local dir=$STATE/mariadb
    mkdir -p "$dir"
    chown mysql:mysql "$dir"
    setpriv --reuid=mysql --regid=mysql --init-groups test -w "$dir" \
        || die "the mysql user cannot write $dir: STATE and its parents must be traversable (chmod o+x)"
    mariadb-install-db --user=mysql --datadir="$dir/data" --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/logs/mariadb-install.log" 2>&1 \
        || { cat "$STATE/logs/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    # slurmdbd (22.05) reaches "localhost" through the default socket only.
    install -d -o mysql -g root -m 0755 /run/mysqld
    if mariadb --no-defaults --socket=/run/mysqld/mysqld.sock -u root -e "SELECT 1" >/dev/null 2>&1; then
        die "a MariaDB server already listens on /run/mysqld/mysqld.sock: stop it first"
    fi
    spawn mariadb /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$dir/data" \
        --socket=/run/mysqld/mysqld.sock --pid-file="$dir/mysqld.pid" --skip-networking \
        --innodb-lock-wait-timeout=900 --log-error="$dir/error.log"
    wait_for mariadb 30 mariadb --no-defaults --socket=/run/mysqld/mysqld.sock -u root -e "SELECT 1"
}

write_slurm_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=${MTL_SLURM_CPUS:-$(nproc)}
    mem=$(( $(awk '/MemTotal/ { print $2 }' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p /etc/slurm "$STATE/slurmctld" "$STATE/slurmd"
    if [ -f /etc/slurm/slurm.conf ] && ! grep -q "written by .ci/cluster/setup.sh" /etc/slurm/slurm.conf; then
        cp /etc/slurm/slurm.conf "/etc/slurm/slurm.conf.before-mtl"
        say "kept the existing /etc/slurm/slurm.conf as slurm.conf.before-mtl"
    fi
    cat >/etc/slurm/slurm.conf <<EOF
# written by .ci/cluster/setup.sh: a one-node cluster for STATE=$STATE
ClusterName=mtl
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# A job's tasks get the nice value of its srun (e.g. `renice` in hydra.launcher.setup).
PropagatePrioProcess=1
# The node as written here, even with more CPUs than the machine (MTL_SLURM_CPUS).
SlurmdParameters=config_overrides
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld/slurmctld.pid
SlurmdPidFile=$STATE/slurmd/slurmd.pid
SlurmctldLogFile=$STATE/logs/slurmctld.log
SlurmdLogFile=$STATE/logs/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=10
# Accounting (sacct), which submitit reads to see a cancelled or timed-out job end.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/slurmdbd.conf <<EOF
# written by .ci/cluster/setup.sh
AuthType=auth/munge
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/logs/slurmdbd-daemon.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 0600 /etc/slurm/slurmdbd.conf
}

start_slurm() {
    write_slurm_conf
    spawn slurmdbd /usr/sbin/slurmdbd -D
    wait_for slurmdbd 30 sacctmgr -n list cluster
    spawn slurmctld /usr/sbin/slurmctld -D -i
    wait_for slurmctld 30 scontrol ping
    spawn slurmd /usr/sbin/slurmd -D
    wait_for slurmd 30 bash -c "sinfo -h -p '$PARTITION' -o %T | grep -qE '^(idle|mixed|allocated)'"
}

start_postgres() {
    local ver
    ver=$(pg_lsclusters -h | awk '$2 == "main" { print $1; exit }')
    if [ -z "$ver" ]; then
        ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
        pg_createcluster "$ver" main >/dev/null
    fi
    PG_PORT=$(pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { print $3 }')
    if pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { print $4 }' | grep -q online; then
        say "PostgreSQL $ver/main already running: using it (not stopped by stop)"
    else
        pg_ctlcluster "$ver" main start
        # Stopped by this PID (the postmaster), as the other daemons.
        pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { print $6 }' \
            | xargs -I{} head -1 {}/postmaster.pid >"$STATE/pids/postgres.pid"
        stat_field "$(cat "$STATE/pids/postgres.pid")" 22 >"$STATE/pids/postgres.start"
        echo "$ver" >"$STATE/pids/postgres.version"
        echo postgres >>"$STATE/pids/order"
    fi
    runuser -u postgres -- psql -q -p "$PG_PORT" -v ON_ERROR_STOP=1 >/dev/null <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASS';
  END IF;
END \$\$;
DROP DATABASE IF EXISTS $PG_DB WITH (FORCE);
CREATE DATABASE $PG_DB OWNER $PG_USER;
EOF
}

start_mlflow() {
    BACKEND_URI="postgresql+psycopg2://$PG_USER:$PG_PASS@127.0.0.1:$PG_PORT/$PG_DB"
    "$PYTHON" -c "import mlflow, psycopg2" 2>/dev/null \
        || die "$PYTHON lacks mlflow or psycopg2 (pip install -e '.[dev]'; or set MTL_PYTHON)"
    mkdir -p "$STATE/mlartifacts"
    # Job execution off: the default server stalls on keep-alive requests (see tests/experiments/procs.py).
    spawn mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$PYTHON" -m mlflow server \
        --host 127.0.0.1 --port "$PORT" --workers 1 \
        --backend-store-uri "$BACKEND_URI" \
        --serve-artifacts --artifacts-destination "$STATE/mlartifacts"
    wait_for mlflow 120 http_ok "http://127.0.0.1:$PORT/health"
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "must run as root (daemons, /etc/slurm)"
    local t0 step
    t0=$(now)
    cmd_install
    say "packages ready after $(elapsed "$t0") s"
    mkdir -p "$STATE/pids" "$STATE/logs"
    chmod 0755 "$STATE"
    if [ -s "$STATE/pids/order" ]; then say "a cluster is running from $STATE: stopping it"; cmd_stop; mkdir -p "$STATE/pids" "$STATE/logs"; fi
    # Stop what was started if any step fails.
    trap 'say "start failed: stopping what was started"; cmd_stop' EXIT
    step=$(now)
    start_munge
    start_mariadb
    start_slurm
    say "SLURM up in $(elapsed "$step") s"
    step=$(now)
    start_postgres
    start_mlflow
    say "MLflow server up in $(elapsed "$step") s"
    trap - EXIT
    cat >"$STATE/env" <<EOF
MTL_PARTITION=$PARTITION
MTL_TRACKING_URI=http://127.0.0.1:$PORT
MTL_BACKEND_URI=$BACKEND_URI
MTL_SLURM_CONF=/etc/slurm/slurm.conf
EOF
    say "started in $(elapsed "$t0") s: partition $PARTITION, tracking.uri=http://127.0.0.1:$PORT"
}

# --- stop -----------------------------------------------------------------------------------

cmd_stop() {
    local name pid t0 left i
    [ -d "$STATE/pids" ] || { say "nothing started from $STATE"; return 0; }
    t0=$(now)
    # Jobs first: their steps (slurmstepd) outlive slurmd.
    if alive "$(pid_of slurmctld)"; then
        scancel --full -u "$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    [ -f "$STATE/pids/order" ] || return 0
    # SIGTERM to every daemon started (each leads its own process group), at once; PostgreSQL
    # through pg_ctlcluster, which stops that same postmaster cleanly.
    for name in $(tac "$STATE/pids/order"); do
        pid=$(pid_of "$name")
        alive "$pid" || continue
        if [ "$name" = postgres ]; then
            pg_ctlcluster "$(cat "$STATE/pids/postgres.version")" main stop -m fast &
        else
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for i in $(seq 100); do  # up to 20 s, then SIGKILL
        left=""
        for name in $(cat "$STATE/pids/order"); do alive "$(pid_of "$name")" && left="$left $name"; done
        [ -z "$left" ] && break
        sleep 0.2
    done
    for name in $left; do
        pid=$(pid_of "$name")
        say "$name ($pid) still running after 20 s: SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    wait
    for name in $(cat "$STATE/pids/order"); do rm -f "$STATE/pids/$name.pid" "$STATE/pids/$name.start"; done
    rm -f "$STATE/pids/order" "$STATE/pids/postgres.version"
    say "stopped what $STATE started, in $(elapsed "$t0") s"
}

case "${1:-}" in
    install) cmd_install ;;
    start|stop)
        [ -n "${2:-}" ] || die "usage: $0 $1 STATE_DIR"
        mkdir -p "$2"
        STATE=$(cd "$2" && pwd)
        "cmd_$1"
        ;;
    *) echo "usage: $0 install | start STATE_DIR | stop STATE_DIR" >&2; exit 2 ;;
esac
