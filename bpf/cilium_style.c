// SPDX-License-Identifier: GPL-2.0
/*
 * vlab's cilium-style datapath: two tc programs in the manner of Cilium's
 * bpf_lxc.c (from a container) and bpf_overlay.c (from the VXLAN device).
 *
 * from_container, at the ingress of each container's host-side veth: the
 * sender's security identity comes from the endpoints map, the destination's
 * from the endpoints map (a local endpoint) or the ip-cache map (a remote
 * one, with its node). A new connection passes the sender's egress policy
 * (and, to a local endpoint, the receiver's ingress policy) and is tracked
 * (ct map); to a remote endpoint the tunnel key is set (remote node, VNI =
 * the sender's identity) and the packet redirected to the collect-metadata
 * VXLAN device, which encapsulates it; to a local one it is delivered to
 * that endpoint's veth.
 *
 * from_overlay, at the ingress of the VXLAN device: the sender's identity is
 * the tunnel key's id; a reply of a connection its destination opened, or a
 * packet of a connection the policy already admitted, passes by connection
 * tracking; a new connection passes the destination's ingress policy.
 *
 * A policy decision, keyed like Cilium's policy map (local endpoint, remote
 * identity, protocol, destination port, direction; with the L4-only and
 * L3-only wildcards looked up in Cilium's order): a matching deny entry
 * drops; else an endpoint without a policy in that direction passes; else a
 * matching allow entry passes, and a miss drops. Delivery rewrites the MACs
 * and redirects to the endpoint's veth.
 *
 * Every verdict is counted in the metrics map (packets, bytes); each policy
 * entry counts the packets it admitted or denied, and the denied map what
 * the policy dropped, by the key of its exact lookup. The harness fills the
 * maps (pinned by name under /sys/fs/bpf/tc/globals) with bpftool and reads
 * them back.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* A local endpoint (container), by its IPv4 address. */
struct endpoint {
	__u32 identity;
	__u32 ifindex; /* its host-side veth */
	__u8 mac[6]; /* the container's eth0 */
	__u8 node_mac[6]; /* the host-side veth */
};

/* Where a remote endpoint is: its node's underlay address (host order, as
 * the tunnel key wants it) and its identity. */
struct ipcache_entry {
	__u32 tunnel_endpoint;
	__u32 identity;
};

/* Cilium's policy key, flattened: the local endpoint's identity (Cilium has
 * one map per endpoint), the remote identity (0: any), protocol (0: any),
 * the direction (1: egress, the local endpoint sends), destination port in
 * host order (0: any). */
struct policy_key {
	__u32 endpoint;
	__u32 remote;
	__u8 protocol;
	__u8 egress;
	__u16 dport;
};

/* The enforced map's value: the directions in which an endpoint has a
 * policy (default deny). */
#define ENFORCE_INGRESS 1
#define ENFORCE_EGRESS 2

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* A tracked flow as its first packet had it; `dir` tells who opened it. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 dir; /* CT_OUT: a local endpoint opened it; CT_IN: a remote one did */
	__u16 pad;
};

enum { CT_OUT = 1, CT_IN = 2 };

/* The metrics map's slots. */
enum {
	M_TO_OVERLAY, /* sent into the tunnel */
	M_REPLY_TO_OVERLAY, /* of them, replies of connections the policy admitted */
	M_CT_REPLY, /* a reply to a connection a local endpoint opened */
	M_CT_ESTABLISHED, /* more of a connection a remote endpoint opened */
	M_POLICY_ALLOWED, /* a new connection the policy admitted */
	M_POLICY_DENIED, /* dropped: no policy entry */
	M_NO_POLICY, /* a new connection to an endpoint without policy */
	M_UNKNOWN_ENDPOINT, /* from the tunnel to no local endpoint: left to the stack */
	M_EGRESS_ALLOWED, /* a new connection the sender's egress policy admitted */
	M_EGRESS_DENIED, /* dropped by the sender's egress policy */
	M_EGRESS_NO_POLICY, /* a new connection from an endpoint without egress policy */
	M_LOCAL, /* delivered to an endpoint on the same node */
	M_SLOTS,
};

/* config[0]: the VXLAN device's ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct ipcache_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_ipcache SEC(".maps");

/* Allow entries; as many as MAX_ENTRIES in harness/overlay/cilium_style/policy.rs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct policy_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_policy SEC(".maps");

/* Deny entries: a match drops, whatever allows it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct policy_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_policy_deny SEC(".maps");

/* What the policy dropped, by the key of its exact lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct policy_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_denied SEC(".maps");

/* The identities that have a policy, with the directions (ENFORCE_*) in
 * which traffic is denied unless an entry allows it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_enforced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, M_SLOTS);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_metrics SEC(".maps");

static __always_inline void count(struct counter *c, struct __sk_buff *skb)
{
	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, skb->len);
	}
}

/* Counts the packet in `map`'s entry `key`, which it adds when missing. */
static __always_inline void count_key(void *map, const void *key, struct __sk_buff *skb)
{
	struct counter zero = {};

	if (!bpf_map_lookup_elem(map, key))
		bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
	count(bpf_map_lookup_elem(map, key), skb);
}

static __always_inline void metric(__u32 slot, struct __sk_buff *skb)
{
	count(bpf_map_lookup_elem(&vlab_metrics, &slot), skb);
}

/* The flow of an IPv4 packet: addresses, protocol and ports (0 without). */
static __always_inline int flow_of(struct __sk_buff *skb, struct ct_key *k)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->protocol = ip->protocol;
	k->sport = 0;
	k->dport = 0;
	k->dir = 0;
	k->pad = 0;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		/* Both headers start with the two ports. */
		__u16 *ports = (void *)ip + ip->ihl * 4;

		if (ip->ihl < 5 || (void *)(ports + 2) > end)
			return -1;
		k->sport = bpf_ntohs(ports[0]);
		k->dport = bpf_ntohs(ports[1]);
	}
	return 0;
}

/* The key of the other direction of `k`'s flow, tracked as `dir`. */
static __always_inline void reverse(const struct ct_key *k, struct ct_key *r, __u8 dir)
{
	r->saddr = k->daddr;
	r->daddr = k->saddr;
	r->sport = k->dport;
	r->dport = k->sport;
	r->protocol = k->protocol;
	r->dir = dir;
	r->pad = 0;
}

/* The entry of `map` that matches, in Cilium's lookup order: exact,
 * L4-only (any remote), L3-only (any port), all; `p` holds the endpoint and
 * direction. */
static __always_inline struct counter *lookup_policy(void *map, struct policy_key *p, __u32 remote, __u8 protocol,
						      __u16 dport)
{
	struct counter *c;

	p->remote = remote;
	p->protocol = protocol;
	p->dport = dport;
	c = bpf_map_lookup_elem(map, p);
	if (c)
		return c;
	p->remote = 0;
	c = bpf_map_lookup_elem(map, p);
	if (c)
		return c;
	p->remote = remote;
	p->protocol = 0;
	p->dport = 0;
	c = bpf_map_lookup_elem(map, p);
	if (c)
		return c;
	p->remote = 0;
	return bpf_map_lookup_elem(map, p);
}

/* The policy's decision on a new connection at `endpoint` with `remote`
 * (egress: the endpoint sends it): 1 passes, 0 drops. A deny entry drops;
 * an endpoint without a policy in this direction passes; an allow entry
 * passes; a miss drops. Drops are counted in the denied map by the exact
 * key. */
static __always_inline int policy_passes(__u32 endpoint, __u32 remote, __u8 egress, __u8 protocol, __u16 dport,
					 struct __sk_buff *skb)
{
	struct policy_key p = { .endpoint = endpoint, .egress = egress };
	struct policy_key d = { .endpoint = endpoint, .remote = remote, .protocol = protocol, .egress = egress, .dport = dport };
	struct counter *c;
	__u32 *flags;

	c = lookup_policy(&vlab_policy_deny, &p, remote, protocol, dport);
	if (!c) {
		flags = bpf_map_lookup_elem(&vlab_enforced, &endpoint);
		if (!flags || !(*flags & (egress ? ENFORCE_EGRESS : ENFORCE_INGRESS))) {
			metric(egress ? M_EGRESS_NO_POLICY : M_NO_POLICY, skb);
			return 1;
		}
		c = lookup_policy(&vlab_policy, &p, remote, protocol, dport);
		if (c) {
			count(c, skb);
			metric(egress ? M_EGRESS_ALLOWED : M_POLICY_ALLOWED, skb);
			return 1;
		}
	} else {
		count(c, skb);
	}
	count_key(&vlab_denied, &d, skb);
	metric(egress ? M_EGRESS_DENIED : M_POLICY_DENIED, skb);
	return 0;
}

/* Rewrites the MACs for `ep` and redirects to its veth. */
static __always_inline int deliver(struct __sk_buff *skb, struct endpoint *ep)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->node_mac, ETH_ALEN);
	return bpf_redirect(ep->ifindex, 0);
}

SEC("from-container")
int from_container(struct __sk_buff *skb)
{
	struct ct_key k, r;
	struct endpoint *src, *local;
	struct ipcache_entry *dst = NULL;
	struct bpf_tunnel_key key = {};
	__u32 first = 0, *vxlan, remote;
	struct counter zero = {}, *tracked;

	if (flow_of(skb, &k) < 0)
		return TC_ACT_OK;
	src = bpf_map_lookup_elem(&vlab_endpoints, &k.saddr);
	if (!src)
		return TC_ACT_OK;
	local = bpf_map_lookup_elem(&vlab_endpoints, &k.daddr);
	if (local) {
		remote = local->identity;
	} else {
		dst = bpf_map_lookup_elem(&vlab_ipcache, &k.daddr);
		if (!dst)
			return TC_ACT_OK; /* not to an endpoint: the stack's */
		remote = dst->identity;
	}
	vxlan = bpf_map_lookup_elem(&vlab_config, &first);
	if (!local && (!vxlan || !*vxlan))
		return TC_ACT_OK;
	reverse(&k, &r, CT_IN);
	if (bpf_map_lookup_elem(&vlab_ct, &r)) {
		/* A reply of a connection a remote endpoint opened. */
		metric(M_REPLY_TO_OVERLAY, skb);
	} else {
		reverse(&k, &r, CT_OUT);
		if (bpf_map_lookup_elem(&vlab_ct, &r)) {
			/* A reply of a connection a local endpoint opened to this one. */
			metric(M_CT_REPLY, skb);
		} else {
			k.dir = CT_OUT;
			tracked = bpf_map_lookup_elem(&vlab_ct, &k);
			if (!tracked) {
				if (!policy_passes(src->identity, remote, 1, k.protocol, k.dport, skb))
					return TC_ACT_SHOT;
				if (local && !policy_passes(local->identity, src->identity, 0, k.protocol, k.dport, skb))
					return TC_ACT_SHOT;
				bpf_map_update_elem(&vlab_ct, &k, &zero, BPF_NOEXIST);
				tracked = bpf_map_lookup_elem(&vlab_ct, &k);
			}
			count(tracked, skb);
		}
	}
	if (local) {
		metric(M_LOCAL, skb);
		return deliver(skb, local);
	}
	key.remote_ipv4 = dst->tunnel_endpoint;
	key.tunnel_id = src->identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	metric(M_TO_OVERLAY, skb);
	return bpf_redirect(*vxlan, 0);
}

SEC("from-overlay")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct ct_key k, reply;
	struct endpoint *ep;
	struct counter zero = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	if (flow_of(skb, &k) < 0)
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&vlab_endpoints, &k.daddr);
	if (!ep) {
		metric(M_UNKNOWN_ENDPOINT, skb);
		return TC_ACT_OK;
	}
	reverse(&k, &reply, CT_OUT);
	k.dir = CT_IN;
	if (bpf_map_lookup_elem(&vlab_ct, &reply)) {
		metric(M_CT_REPLY, skb);
	} else if (bpf_map_lookup_elem(&vlab_ct, &k)) {
		count(bpf_map_lookup_elem(&vlab_ct, &k), skb);
		metric(M_CT_ESTABLISHED, skb);
	} else {
		if (!policy_passes(ep->identity, (__u32)key.tunnel_id, 0, k.protocol, k.dport, skb))
			return TC_ACT_SHOT;
		/* Tracked: its replies are replies, not new flows. */
		bpf_map_update_elem(&vlab_ct, &k, &zero, BPF_NOEXIST);
	}
	return deliver(skb, ep);
}

char _license[] SEC("license") = "GPL";
