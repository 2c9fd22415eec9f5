#!/bin/sh
# usage: run.sh TAG deepshrink-args...   -> /tmp/t14g/logs/TAG.log with exit status and wall time
cd /tmp/t14g; mkdir -p logs
TAG=$1; shift
export PYTHONPATH=/work/wt-trial/src
t0=$(date +%s.%N)
/work/main/.venv/bin/python -m deepshrink.cli "$@" > logs/$TAG.log 2>&1
rc=$?
t1=$(date +%s.%N)
echo "EXIT $rc WALL $(echo "$t1 - $t0" | bc)" >> logs/$TAG.log
