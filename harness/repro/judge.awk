# Reads one pcap file as `od -An -v -tu1` prints it (decimal bytes) and
# prints what the checks need, one line per fact:
#   flow SRC DST          each source and destination pair of a TCP segment
#   dst ADDR CBIT NEUTRAL each destination: its C-bit, and whether its address
#                         sum is that of the SIR address of its locator (1,
#                         0; - where the locator is no VM's)
#   wire STATE            (kind=wire) a segment's field against the mode:
#                         doc, notdoc or unjudged
#   container STATE       (kind=container) valid, invalid, offloaded, unjudged
# Variables: kind (wire or container), mode (the ILA checksum mode), mtu,
# map ("LOCATOR=SUM ..."; LOCATOR 16 hex digits, SUM the SIR address's
# word sum modulo 65535).
# Ethernet (link type 1) and Linux cooked captures (113, 276); IPv6 with TCP
# right after the fixed header; anything else is skipped.
BEGIN {
	n = split(map, m, " ")
	for (i = 1; i <= n; i++) {
		split(m[i], kv, "=")
		sirsum[kv[1]] = kv[2] + 0
	}
	pos = 0; state = "global"; need = 24; got = 0
}
{
	for (f = 1; f <= NF; f++) {
		p[got++] = $f + 0
		if (got == need) step()
	}
}
function le32(o) { return p[o] + p[o + 1] * 256 + p[o + 2] * 65536 + p[o + 3] * 16777216 }
function be32(o) { return p[o] * 16777216 + p[o + 1] * 65536 + p[o + 2] * 256 + p[o + 3] }
function u32(o) { return big ? be32(o) : le32(o) }
function step() {
	if (state == "global") {
		big = (p[0] == 161 && p[1] == 178)
		if (!big && !(p[3] == 161 && p[2] == 178)) { print "error not a pcap file"; exit 2 }
		link = u32(20) % 65536
		state = "record"; need = 16
	} else if (state == "record") {
		incl = u32(8); orig = u32(12)
		state = "data"; need = incl
		if (incl == 0) { state = "record"; need = 16 }
	} else {
		packet(incl, orig)
		state = "record"; need = 16
	}
	got = 0
	if (state == "record") split("", p)
}
function wsum(o, len,   s, i) {
	s = 0
	for (i = 0; i + 1 < len; i += 2) s += p[o + i] * 256 + p[o + i + 1]
	if (len % 2) s += p[o + len - 1] * 256
	return s
}
function hexaddr(o,   s, i) {
	s = ""
	for (i = 0; i < 8; i++) s = s sprintf("%02x", p[o + i])
	return s
}
# RFC 5952 text, as the kernel, tcpdump and vlab print addresses.
function addr(o,   g, i, best, bl, cur, cl, out) {
	for (i = 0; i < 8; i++) g[i] = p[o + 2 * i] * 256 + p[o + 2 * i + 1]
	best = -1; bl = 0; cur = -1; cl = 0
	for (i = 0; i < 8; i++) {
		if (g[i] == 0) {
			if (cur < 0) { cur = i; cl = 0 }
			cl++
			if (cl > bl) { bl = cl; best = cur }
		} else cur = -1
	}
	if (bl < 2) best = -1
	out = ""
	for (i = 0; i < 8; i++) {
		if (i == best) { out = out "::"; i += bl - 1; continue }
		if (out != "" && substr(out, length(out)) != ":") out = out ":"
		out = out sprintf("%x", g[i])
	}
	return out
}
# What the field is for a destination whose word sum is DSUM: full (the
# segment is valid for it), seed (its pseudo-header sum) or none.
function field_for(src, dsum, tcp, len, field,   pseudo, total) {
	pseudo = src + dsum + len + 6
	total = pseudo + wsum(tcp, len)
	if (total != 0 && total % 65535 == 0) return "full"
	if (field % 65535 == pseudo % 65535) return "seed"
	return "none"
}
function packet(incl, orig,   l2, et, ip, plen, tcp, len, src, dst, d, loc, wire, sir, documented, field, status) {
	if (link == 1) { l2 = 14; et = p[12] * 256 + p[13]; if (et == 33024) { l2 = 18; et = p[16] * 256 + p[17] } }
	else if (link == 113) { l2 = 16; et = p[14] * 256 + p[15] }
	else if (link == 276) { l2 = 20; et = p[0] * 256 + p[1] }
	else return
	if (et != 34525 || incl < l2 + 40) return
	ip = l2
	if (p[ip + 6] != 6) return
	plen = p[ip + 4] * 256 + p[ip + 5]
	tcp = ip + 40; len = plen
	src = wsum(ip + 8, 16); d = wsum(ip + 24, 16)
	dst = addr(ip + 24)
	print "flow " addr(ip + 8) " " dst
	loc = hexaddr(ip + 24)
	if (kind == "wire" && !(dst in seen)) {
		seen[dst] = 1
		print "dst " dst " " (int(p[ip + 32] / 16) % 2) " " ((loc in sirsum) ? (d % 65535 == sirsum[loc] ? 1 : 0) : "-")
	}
	# Cut short by the snap length or by the end of the capture.
	if (orig < l2 + 40 + plen || incl < l2 + 40 + plen || len < 20) { print kind " unjudged"; return }
	field = p[tcp + 16] * 256 + p[tcp + 17]
	wire = field_for(src, d, tcp, len, field)
	sir = (loc in sirsum) ? field_for(src, sirsum[loc], tcp, len, field) : "none"
	if (kind == "container") {
		if (wire == "full") status = "valid"
		else if (wire == "seed") status = "offloaded"
		else if (40 + plen > mtu) status = "unjudged"
		else status = "invalid"
		print "container " status
		return
	}
	if (wire != "full" && wire != "seed" && sir != "seed" && 40 + plen > mtu) { print "wire unjudged"; return }
	documented = (mode == "no-action") ? sir : wire
	if (wire == "seed" || sir == "seed") { print "wire " (documented == "seed" ? "doc" : "notdoc"); return }
	# A full checksum valid for the wire address under no-action may have
	# been completed after the translation (not its work); without the
	# sender's own capture to tell, it is not judged.
	if (mode == "no-action" && wire == "full") { print "wire unjudged"; return }
	print "wire " (documented == "full" ? "doc" : "notdoc")
}
