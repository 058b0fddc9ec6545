# The same in every script of `vlab repro`, after NAMESPACES.
set -u
LC_ALL=C
export LC_ALL
ksft_pass=0
ksft_fail=1
ksft_skip=4

tmp=
ours=
captures=
num=0
failed=0

cleanup() {
	if [ -n "$ours" ]; then
		for ns in $NAMESPACES; do
			for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
		done
		for ns in $NAMESPACES; do
			[ ! -e "/run/netns/$ns" ] || ip netns del "$ns"
		done
	fi
	[ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

skip() {
	echo "# SKIP: $*"
	exit "$ksft_skip"
}

bail() {
	echo "Bail out! $*"
	exit "$ksft_fail"
}

# Runs script $2 in network namespace $1 (its mounts are the host's).
in_ns() {
	nsenter --net="/run/netns/$1" sh -e "$2" </dev/null
}

# Whether a socket listens on TCP port $2 in namespace $1.
listening() {
	nsenter --net="/run/netns/$1" awk -v port="$(printf ':%04X' "$2")" \
		'substr($2, length($2) - 4) == port && $4 == "0A" { f = 1 } END { exit !f }' /proc/net/tcp /proc/net/tcp6
}

# The sum of TcpInCsumErrors in the namespaces named.
csum_errors() {
	t=0
	for ns; do
		v=$(nsenter --net="/run/netns/$ns" awk '$1 == "Tcp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "InCsumErrors") c = i; h = 1 } else if (c) print $c }' /proc/net/snmp)
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

# Lines on stdin joined by ", ".
lines() {
	awk 'NR > 1 { printf ", " } { printf "%s", $0 } END { print "" }'
}

# The verdict of check $check: pass, fail or skip, and the evidence.
verdict() {
	num=$((num + 1))
	case $1 in
	pass) echo "ok $num $check" ;;
	skip) echo "ok $num $check # SKIP" ;;
	*)
		echo "not ok $num $check"
		failed=1
		;;
	esac
	echo "# $2"
}
