#!/usr/bin/env bash
# tests/ops_test.sh TALLYD — the alerting rules and the Grafana dashboard in
# ops/ against promtool and against a real tallyd:
#   1. `promtool check rules` and `promtool test rules` on ops/prometheus/;
#   2. every PromQL expression of ops/grafana/tally.json (panel targets and
#      the selectors of its variable queries) parses: Grafana's variables are
#      substituted, then promtool checks them as recording rules;
#   3. a tallyd on a real Redis and Postgres takes one event and flushes it;
#      every tally_* name the rules and the dashboard use must be in its
#      /metrics: a series name in an expression must be a sample name there
#      (name_bucket/_sum/_count of a histogram family included), a name in
#      prose (comments, annotations, descriptions) may also be a family or
#      one of the tables tallyd created in Postgres.
# Any failure names the check, the expression or the missing metric, and
# every exit path stops tallyd and the servers.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tallyd=${1:?usage: ops_test.sh TALLYD}
rules=$src/ops/prometheus/tally.rules.yml
rule_tests=$src/ops/prometheus/tally.rules.test.yml
dashboard=$src/ops/grafana/tally.json

fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in promtool python3 redis-cli curl; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/setup installs what the tests need)"
done
[[ -x $tallyd ]] || fail "tallyd '$tallyd' is not an executable"

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-ops-XXXXXX")
# The postgres user must pass through to the servers' state dir (as root,
# scripts/servers otherwise moves Postgres's data to /var/tmp).
chmod 0711 "$work"
tallyd_pid=""
cleanup() {
  local rc=$?
  if [[ -n $tallyd_pid ]] && kill -0 "$tallyd_pid" 2>/dev/null; then
    kill -TERM "$tallyd_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$tallyd_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$tallyd_pid" 2>/dev/null || true
    wait "$tallyd_pid" 2>/dev/null || true
  fi
  "$src/scripts/servers" purge "$work/servers" >/dev/null 2>&1 || echo "ops_test: scripts/servers purge failed" >&2
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the rules ----------------------------------------------------------
echo "--- promtool check rules / test rules"
out=$(promtool check rules "$rules" 2>&1) || { echo "$out"; fail "promtool check rules $rules"; }
echo "$out"
rule_count=$(sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' <<<"$out")
[[ -n $rule_count ]] || fail "no rule count in the output of promtool check rules"
out=$(promtool test rules "$rule_tests" 2>&1) || { echo "$out"; fail "promtool test rules $rule_tests"; }
echo "$out"

# --- 2. the dashboard's expressions ------------------------------------------
# Writes the dashboard's expressions as recording rules (JSON is YAML) and
# the names they use, one per line, to the files given.
echo "--- dashboard expressions"
python3 - "$dashboard" "$work/dashboard.rules.json" <<'EOF' || fail "the dashboard's expressions (see above)"
import json, re, sys

path, out_path = sys.argv[1], sys.argv[2]
with open(path) as f:
    dash = json.load(f)  # a syntax error fails here, with its line

# Grafana's own interval variables, as a duration PromQL accepts.
builtins = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
datasource_vars = {n for n, v in variables.items() if v.get("type") == "datasource"}
problems = []

def substitute(expr, where):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return ".*"  # a value inside a label matcher; a regex fits = and =~ alike
        problems.append(f"{where}: unknown variable ${name} in: {expr}")
        return m.group(0)
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)

def check_datasource(ds, where):
    uid = ds.get("uid", "") if isinstance(ds, dict) else str(ds or "")
    m = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if not m or m.group(1) not in datasource_vars:
        problems.append(f"{where}: datasource {ds!r} is not a datasource variable ({sorted(datasource_vars)})")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

rules = []
for p in panels(dash.get("panels", [])):
    where = f"panel {p.get('id')} \"{p.get('title')}\""
    if p.get("type") != "row":
        check_datasource(p.get("datasource"), where)
    for t in p.get("targets", []):
        expr = t.get("expr", "").strip()
        if not expr:
            problems.append(f"{where} target {t.get('refId')}: empty expr")
            continue
        check_datasource(t.get("datasource"), f"{where} target {t.get('refId')}")
        rules.append({"record": f"dashboard:panel_{p.get('id')}_{t.get('refId')}",
                      "expr": substitute(expr, where)})
for name, v in variables.items():
    if v.get("type") != "query":
        continue
    check_datasource(v.get("datasource"), f"variable {name}")
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else q or ""
    m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", q)
    if not m:
        problems.append(f"variable {name}: not a label_values(selector, label) query: {q}")
        continue
    rules.append({"record": f"dashboard:variable_{name}", "expr": substitute(m.group(1), f"variable {name}")})

if not rules:
    problems.append("no expressions found")
for p in problems:
    print("dashboard:", p, file=sys.stderr)
with open(out_path, "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
print(f"{len(rules)} expressions")
sys.exit(1 if problems else 0)
EOF
out=$(promtool check rules "$work/dashboard.rules.json" 2>&1) ||
  { echo "$out"; fail "a dashboard expression does not parse (rule names say panel id and refId)"; }
echo "$out"

# --- 3. the names against a real tallyd ---------------------------------------
echo "--- a real tallyd"
"$src/scripts/servers" start "$work/servers" >"$work/servers.log" 2>&1 ||
  { cat "$work/servers.log"; fail "scripts/servers start"; }
# shellcheck disable=SC1091
source "$work/servers/servers.env"
"$tallyd" --redis-urls "$REDIS_URL" --postgres-url "$POSTGRES_URL" --resp-port 0 --http-port 0 \
  --state-dir "$work/state" --ns opstest >"$work/tallyd.log" 2>&1 &
tallyd_pid=$!

ready_ports() { sed -n 's/.*tallyd ready: resp [^ ]*:\([0-9]*\) http [^ ]*:\([0-9]*\).*/\1 \2/p' "$work/tallyd.log"; }
deadline=$((SECONDS + 60))
until [[ -n $(ready_ports) ]]; do
  kill -0 "$tallyd_pid" 2>/dev/null || { tail -20 "$work/tallyd.log"; fail "tallyd exited before it was ready"; }
  ((SECONDS < deadline)) || { tail -20 "$work/tallyd.log"; fail "no 'tallyd ready' line within 60s"; }
  sleep 0.1
done
read -r resp_port http_port < <(ready_ports)
echo "tallyd ready: RESP $resp_port, HTTP $http_port"

reply=$(redis-cli -p "$resp_port" TALLY.RECORD key k spend 1 2>&1)
[[ $reply == OK ]] || fail "TALLY.RECORD answered '$reply'"

# Wait until the event went through both stages and the registry read the
# backlog, so the scrape shows every family with live values.
sample() {  # sample NAME: the value of an unlabelled sample, empty when absent
  awk -v n="$1" '$1 == n { print $2 }' "$work/metrics.txt"
}
deadline=$((SECONDS + 60))
while :; do
  curl -fsS "http://127.0.0.1:$http_port/metrics" >"$work/metrics.txt" ||
    fail "GET /metrics on port $http_port"
  accepted=$(sample tally_events_accepted_total) flushes=$(sample tally_flushes_total)
  backlog=$(sample tally_redis_backlog_batches) leases=$(sample tally_lease_held)
  if [[ ${accepted:-0} -ge 1 && ${flushes:-0} -ge 1 && -n $backlog && ${leases:-0} -eq 1 ]]; then
    break
  fi
  kill -0 "$tallyd_pid" 2>/dev/null || { tail -20 "$work/tallyd.log"; fail "tallyd exited"; }
  ((SECONDS < deadline)) || {
    tail -20 "$work/tallyd.log"
    fail "after 60s: events_accepted=${accepted:-none} flushes=${flushes:-none} backlog=${backlog:-none} lease_held=${leases:-none}"
  }
  sleep 0.2
done
echo "scraped: events_accepted=$accepted flushes=$flushes backlog=$backlog lease_held=$leases"

# Prose may also name tally's Postgres tables: the ones tallyd created.
psql -X -qAt "$POSTGRES_URL" -c "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'tally%'" \
  >"$work/tables.txt" || fail "psql: list tally's tables"

python3 - "$work/metrics.txt" "$rules" "$dashboard" "$rule_count" "$work/tables.txt" <<'EOF' || fail "tally_* names not in /metrics (see above)"
import json, re, sys

metrics_path, rules_path, dash_path, rule_count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tables = set(open(sys.argv[5]).read().split())
NAME = re.compile(r"(?<![A-Za-z0-9_:])tally_[A-Za-z0-9_]*[A-Za-z0-9]")

families, samples, info_labels = {}, set(), []
for line in open(metrics_path):
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()[:4]
        families[name] = kind
    elif line.strip() and not line.startswith("#"):
        name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0)
        samples.add(name)
        if name == "tally_info":
            info_labels.append(line)

def rule_exprs(text):
    """The expr of every rule: block scalars (| or >) and one-line ones."""
    lines, exprs, i = text.splitlines(), [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent = len(m.group(1)) + len(m.group(2) or "")
        rest = m.group(3).strip()
        if rest[:1] in ("|", ">"):
            body = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i])
                i += 1
            exprs.append("\n".join(body))
        else:
            exprs.append(rest.strip("'\""))
    return exprs

rules_text = open(rules_path).read()
exprs = rule_exprs(rules_text)
if len(exprs) != rule_count:
    sys.exit(f"found {len(exprs)} exprs in {rules_path} but promtool counts {rule_count} rules")
dash_text = open(dash_path).read()
dash = json.loads(dash_text)

def walk(items):
    for p in items:
        yield p
        yield from walk(p.get("panels", []))
for p in walk(dash.get("panels", [])):
    exprs += [t.get("expr", "") for t in p.get("targets", [])]
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    exprs.append(q.get("query", "") if isinstance(q, dict) else str(q or ""))

in_exprs = {n for e in exprs for n in NAME.findall(e)}
in_prose = set(NAME.findall(rules_text)) | set(NAME.findall(dash_text))
missing = []
for name in sorted(in_exprs | in_prose):
    if name in samples:
        continue
    if name in in_exprs:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in families:
            why = f"a {families[name]} family with no sample named so" + (
                " (use name_bucket, _sum or _count)" if families[name] in ("histogram", "summary") else "")
        elif base != name and base in families:
            why = f"{base} is a {families[base]}, which exposes no {name[len(base):]} series"
        else:
            why = "no such metric"
        missing.append(f"{name} (in an expression): {why}")
    elif name not in families and name not in tables:
        missing.append(f"{name} (in a comment or description): no such metric or table")

# The rules join on tally_info's namespace label.
if not any('namespace="opstest"' in l and "instance=" in l for l in info_labels):
    missing.append('tally_info has no sample with instance="..." and namespace="opstest": ' + repr(info_labels))

for m in missing:
    print("missing:", m, file=sys.stderr)
print(f"{len(in_exprs | in_prose)} tally_* names checked against {len(samples)} sample names")
sys.exit(1 if missing else 0)
EOF
echo "PASS"
