// SPDX-License-Identifier: GPL-2.0
/*
 * vlab's cilium-style datapath: two tc programs in the manner of Cilium's
 * bpf_lxc.c (from a container) and bpf_overlay.c (from the VXLAN device).
 *
 * from_container, at the ingress of each container's host-side veth: the
 * sender's security identity comes from the endpoints map, the destination's
 * node from the ip-cache map; the packet is tracked (ct map), its tunnel key
 * set (remote node, VNI = the sender's identity) and redirected to the
 * collect-metadata VXLAN device, which encapsulates it.
 *
 * from_overlay, at the ingress of the VXLAN device: the sender's identity is
 * the tunnel key's id; a reply of a connection its destination opened, or a
 * packet of a connection the policy already admitted, passes by connection
 * tracking; anything else is looked up in the policy map, keyed like
 * Cilium's (local endpoint, remote identity, protocol, destination port,
 * with the L4-only and L3-only wildcards), and dropped on a miss when the
 * destination endpoint has a policy. Delivery rewrites the MACs and
 * redirects to the endpoint's veth.
 *
 * Every verdict is counted in the metrics map (packets, bytes); each policy
 * entry counts the packets it admitted, and the denied map what the policy
 * dropped, by the key it missed. The harness fills the maps (pinned by name
 * under /sys/fs/bpf/tc/globals) with bpftool and reads them back.
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
 * destination port in host order (0: any). */
struct policy_key {
	__u32 endpoint;
	__u32 remote;
	__u8 protocol;
	__u8 pad;
	__u16 dport;
};

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct policy_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_policy SEC(".maps");

/* What the policy dropped, by the key of its exact lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct policy_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vlab_denied SEC(".maps");

/* The identities that have a policy (value unused): ingress to them is
 * denied unless an entry allows it. */
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

SEC("from-container")
int from_container(struct __sk_buff *skb)
{
	struct ct_key k, admitted;
	struct endpoint *src;
	struct ipcache_entry *dst;
	struct bpf_tunnel_key key = {};
	__u32 first = 0, *vxlan;

	if (flow_of(skb, &k) < 0)
		return TC_ACT_OK;
	src = bpf_map_lookup_elem(&vlab_endpoints, &k.saddr);
	dst = bpf_map_lookup_elem(&vlab_ipcache, &k.daddr);
	vxlan = bpf_map_lookup_elem(&vlab_config, &first);
	if (!src || !dst || !vxlan || !*vxlan)
		return TC_ACT_OK; /* not to a remote endpoint: the stack's */
	reverse(&k, &admitted, CT_IN);
	if (bpf_map_lookup_elem(&vlab_ct, &admitted)) {
		/* A reply of a connection the remote opened: no entry of ours. */
		metric(M_REPLY_TO_OVERLAY, skb);
	} else {
		k.dir = CT_OUT;
		count_key(&vlab_ct, &k, skb);
	}
	key.remote_ipv4 = dst->tunnel_endpoint;
	key.tunnel_id = src->identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	metric(M_TO_OVERLAY, skb);
	return bpf_redirect(*vxlan, 0);
}

/* The policy entry that admits `remote` to `endpoint`, in Cilium's lookup
 * order: exact, L4-only (any remote), L3-only (any port), allow-all. */
static __always_inline struct counter *policy_entry(__u32 endpoint, __u32 remote, __u8 protocol, __u16 dport)
{
	struct policy_key p = { .endpoint = endpoint, .remote = remote, .protocol = protocol, .dport = dport };
	struct counter *c;

	c = bpf_map_lookup_elem(&vlab_policy, &p);
	if (c)
		return c;
	p.remote = 0;
	c = bpf_map_lookup_elem(&vlab_policy, &p);
	if (c)
		return c;
	p.remote = remote;
	p.protocol = 0;
	p.dport = 0;
	c = bpf_map_lookup_elem(&vlab_policy, &p);
	if (c)
		return c;
	p.remote = 0;
	return bpf_map_lookup_elem(&vlab_policy, &p);
}

SEC("from-overlay")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct ct_key k, reply;
	struct endpoint *ep;
	struct counter zero = {}, *entry;
	void *data, *end;
	struct ethhdr *eth;

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
	} else if (!bpf_map_lookup_elem(&vlab_enforced, &ep->identity)) {
		/* Tracked all the same: its replies are replies, not new flows. */
		bpf_map_update_elem(&vlab_ct, &k, &zero, BPF_NOEXIST);
		metric(M_NO_POLICY, skb);
	} else {
		entry = policy_entry(ep->identity, (__u32)key.tunnel_id, k.protocol, k.dport);
		if (!entry) {
			struct policy_key d = { .endpoint = ep->identity,
						.remote = (__u32)key.tunnel_id,
						.protocol = k.protocol,
						.dport = k.dport };

			count_key(&vlab_denied, &d, skb);
			metric(M_POLICY_DENIED, skb);
			return TC_ACT_SHOT;
		}
		count(entry, skb);
		bpf_map_update_elem(&vlab_ct, &k, &zero, BPF_NOEXIST);
		metric(M_POLICY_ALLOWED, skb);
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->node_mac, ETH_ALEN);
	return bpf_redirect(ep->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
