// SPDX-License-Identifier: Apache-2.0
/*
 * ipshadow's fast path: the Shadow Router's per-flow decision for the frames that need nothing
 * else, in XDP on the provider and VM interfaces. Everything it is not sure of goes up
 * (XDP_PASS) to the router in user space, whose core stays the authority: it writes the
 * addresses, splits, salts and flow owners into the maps, and replays every frame forwarded here
 * from the records ring, so its flow table, counters and measurements are as if it had forwarded
 * them itself. A frame forwarded here is always one the core would forward to the same place.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ips_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IPS_MAX_VM_PORTS);
	__type(key, __u32);
	__type(value, struct ips_port);
} ports SEC(".maps");

/* ifindex -> VM port, for frames coming in from a VM. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, IPS_MAX_VM_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} vm_ifindexes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, IPS_DEVMAP_SLOTS);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct ips_shadow);
} shadows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct ips_route);
} routes SEC(".maps");

/* The flows: one global LRU hash (the router sizes it at load, 1M by default). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct ips_flow_key);
	__type(value, struct ips_flow);
} flows SEC(".maps");

/* Clients' MACs, learned from the frames delivered to a VM and from what user space sends. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct ips_neighbour);
} neighbours SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IPS_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &stat);
	if (n)
		*n += 1;
}

static __always_inline int pass(__u32 stat)
{
	count(stat);
	return XDP_PASS;
}

/* SipHash-1-3 of two 64-bit words, as the core's split hash (ipshadow_core's split_hash). */
#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                          \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                             \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                             \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                          \
	} while (0)

static __always_inline __u64 siphash13(__u64 k0, __u64 k1, __u64 m0, __u64 m1)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	__u64 b = 16ULL << 56;

	v3 ^= m0; SIPROUND; v0 ^= m0;
	v3 ^= m1; SIPROUND; v0 ^= m1;
	v3 ^= b; SIPROUND; v0 ^= b;
	v2 ^= 0xff;
	SIPROUND; SIPROUND; SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The side of a new flow: the key packed as the core's FlowKey::words, hashed with the salt. */
static __always_inline __u8 decide(const struct ips_shadow *s, const struct ips_flow_key *key)
{
	__u64 w0 = ((__u64)bpf_ntohl(key->client_ip) << 32) | bpf_ntohl(key->shadow_ip);
	__u64 w1 = 1;
	if (!(s->flags & IPS_SHADOW_CLIENT_AFFINITY))
		w1 = ((__u64)key->client_port << 32) | ((__u64)key->shadow_port << 16) |
		     ((__u64)key->protocol << 8) | 1;
	__u64 k1 = ROTL(s->salt, 32) ^ 0x6970736861646f77ULL;
	__u64 h = siphash13(s->salt, k1, w0, w1) >> 32;
	return h < s->threshold ? IPS_OWNER_DESTINATION : IPS_OWNER_SOURCE;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b && *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline int mac_zero(const __u8 *a)
{
	return *(const __u32 *)a == 0 && *(const __u16 *)(a + 4) == 0;
}

static __always_inline void mac_copy(__u8 *to, const __u8 *from)
{
	*(__u32 *)to = *(const __u32 *)from;
	*(__u16 *)(to + 4) = *(const __u16 *)(from + 4);
}

/* What the parse learned of an IPv4 TCP or UDP frame. */
struct frame {
	struct ethhdr *eth;
	struct iphdr *ip;
	__u16 src_port;
	__u16 dst_port;
	__u32 seq;
	__u32 ack;
	__u16 payload_len;
	__u8 tcp_flags;
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* The IPv4 header checksum of a 20-byte header: the core drops a frame whose sum is wrong. */
static __always_inline int header_sum_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* Whether the TCP/UDP checksum field holds only the pseudo-header's sum: the sender's kernel left
 * the rest to offload (a veth or tap with transmit checksum offload on). Such a frame goes up,
 * where the AF_PACKET path completes it; sent on as it is, the receiver would drop it. A complete
 * checksum that happens to equal that sum (1 in 65,536) goes up as well, which costs nothing. */
static __always_inline int checksum_left_to_offload(const struct iphdr *ip, __u16 field, __u32 l4_len)
{
	__u32 sum = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) + (ip->daddr >> 16) +
		    bpf_htons(ip->protocol) + bpf_htons(l4_len);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return field == (__u16)sum;
}

/* Parses what the fast path handles: untagged IPv4 without options, not a fragment, TCP or UDP,
 * every length consistent. Returns the counter to pass the frame up with, or -1 when it is one. */
static __always_inline int parse(struct xdp_md *ctx, struct frame *f)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return IPS_STAT_PASS_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return IPS_STAT_PASS_NOT_IPV4;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return IPS_STAT_PASS_MALFORMED;
	/* Options are rare and the core parses them: up. */
	if (ip->version != 4 || ip->ihl != 5)
		return IPS_STAT_PASS_MALFORMED;
	if (ip->frag_off & bpf_htons(0x3fff))
		return IPS_STAT_PASS_FRAGMENT;
	__u32 total = bpf_ntohs(ip->tot_len);
	if (total < 20 || (void *)ip + total > end || !header_sum_ok(ip))
		return IPS_STAT_PASS_MALFORMED;
	f->eth = eth;
	f->ip = ip;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)(ip + 1);
		if ((void *)(th + 1) > end)
			return IPS_STAT_PASS_MALFORMED;
		__u32 doff = th->doff * 4;
		if (doff < 20 || 20 + doff > total)
			return IPS_STAT_PASS_MALFORMED;
		f->src_port = bpf_ntohs(th->source);
		f->dst_port = bpf_ntohs(th->dest);
		f->seq = bpf_ntohl(th->seq);
		f->ack = bpf_ntohl(th->ack_seq);
		f->tcp_flags = ((__u8 *)th)[13];
		f->payload_len = total - 20 - doff;
		if (checksum_left_to_offload(ip, th->check, total - 20))
			return IPS_STAT_PASS_CHECKSUM;
		return -1;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = (void *)(ip + 1);
		if ((void *)(uh + 1) > end || total < 28)
			return IPS_STAT_PASS_MALFORMED;
		f->src_port = bpf_ntohs(uh->source);
		f->dst_port = bpf_ntohs(uh->dest);
		f->seq = 0;
		f->ack = 0;
		f->tcp_flags = 0;
		f->payload_len = total - 28;
		if (uh->check && checksum_left_to_offload(ip, uh->check, total - 20))
			return IPS_STAT_PASS_CHECKSUM;
		return -1;
	}
	return IPS_STAT_PASS_PROTOCOL;
}

/* Tells user space what was forwarded. Forwarding never waits for it: a full ring loses the
 * record (counted), and the core relearns what it missed from the frames that go up. */
static __always_inline void record(const struct frame *f, __u64 now, __u8 direction, __u8 port, __u8 new_flow,
				   __u32 packets)
{
	struct ips_record *r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
	if (!r) {
		count(IPS_STAT_RECORDS_LOST);
		return;
	}
	r->at_ns = now;
	r->src = f->ip->saddr;
	r->dst = f->ip->daddr;
	r->src_port = f->src_port;
	r->dst_port = f->dst_port;
	r->seq = f->seq;
	r->ack = f->ack;
	r->payload_len = f->payload_len;
	r->ident = bpf_ntohs(f->ip->id);
	r->protocol = f->ip->protocol;
	r->tcp_flags = f->tcp_flags;
	r->direction = direction;
	r->port = port;
	r->new_flow = new_flow;
	r->pad = 0;
	mac_copy(r->src_mac, f->eth->h_source);
	r->packets = packets;
	/* The kernel wakes the router only when it had caught up with the ring: under load it finds
	 * the records in batches. (Waking it only when 256 KiB waited took TCP from 4.9 to 1.8
	 * Gbit/s here: an idle CPU answers the next frame's wake-up late.) */
	bpf_ringbuf_submit(r, 0);
}

/* Where a client is: learned from a frame delivered to a VM, as the core learns it. With `tell`
 * (a frame the core will not replay), a new or changed MAC is recorded for the core as well: it
 * sends the VMs' frames that go up, and must send them where the program would. */
static __always_inline void learn(const struct frame *f, __u64 now, int tell)
{
	__u8 *src = f->eth->h_source;
	if (src[0] & 1)
		return;
	struct ips_neighbour *n = bpf_map_lookup_elem(&neighbours, &f->ip->saddr);
	if (n && mac_eq(n->mac, src))
		return;
	struct ips_neighbour fresh = {};
	mac_copy(fresh.mac, src);
	bpf_map_update_elem(&neighbours, &f->ip->saddr, &fresh, BPF_ANY);
	if (tell)
		record(f, now, IPS_DIR_NEIGHBOUR, 0, 0, 1);
}

static __always_inline int to_vm(const struct ips_config *cfg, struct frame *f, __u32 port)
{
	struct ips_port *p = bpf_map_lookup_elem(&ports, &port);
	if (!p || !p->ifindex || mac_zero(p->mac))
		return pass(IPS_STAT_PASS_NEXT_HOP);
	mac_copy(f->eth->h_dest, p->mac);
	mac_copy(f->eth->h_source, cfg->vm_side_mac);
	return bpf_redirect_map(&tx_ports, port, 0);
}

static __always_inline int from_provider(const struct ips_config *cfg, struct frame *f, __u64 now)
{
	struct iphdr *ip = f->ip;
	if (!mac_eq(f->eth->h_dest, cfg->provider_mac))
		return pass(IPS_STAT_PASS_NOT_FOR_US);
	struct ips_shadow *s = bpf_map_lookup_elem(&shadows, &ip->daddr);
	if (!s) {
		if (cfg->flags & IPS_CFG_ROUTES_SLOW)
			return pass(IPS_STAT_PASS_SLOW);
		struct ips_route *r = bpf_map_lookup_elem(&routes, &ip->daddr);
		if (!r)
			return pass(IPS_STAT_PASS_NO_ROUTE);
		struct ips_port *p = bpf_map_lookup_elem(&ports, &r->port);
		if (!p || !p->ifindex || mac_zero(p->mac))
			return pass(IPS_STAT_PASS_NEXT_HOP);
		learn(f, now, 1);
		count(IPS_STAT_ROUTED_IN);
		return to_vm(cfg, f, r->port);
	}
	if (s->flags & IPS_SHADOW_SLOW)
		return pass(IPS_STAT_PASS_SLOW);
	struct ips_flow_key key = {
		.client_ip = ip->saddr,
		.shadow_ip = ip->daddr,
		.client_port = f->src_port,
		.shadow_port = f->dst_port,
		.protocol = ip->protocol,
	};
	int tcp = ip->protocol == IPPROTO_TCP;
	int syn = tcp && (f->tcp_flags & TCP_SYN);
	int opens = !tcp || (syn && !(f->tcp_flags & (TCP_ACK | TCP_RST)));
	__u8 owner, new_flow = 0;
	__u32 packets = 1;
	struct ips_flow *flow = bpf_map_lookup_elem(&flows, &key);
	if (flow) {
		/* A SYN on a known tuple may be a new connection, and a flow whose owner is not known
		 * yet goes to both VMs: the core decides. */
		if (syn || flow->owner > IPS_OWNER_DESTINATION)
			return pass(IPS_STAT_PASS_FLOW);
		owner = flow->owner;
	} else {
		/* Mid-stream segments and RSTs of unknown flows are learned by the core. */
		if (!opens)
			return pass(IPS_STAT_PASS_FLOW);
		owner = decide(s, &key);
		new_flow = 1;
	}
	if (owner == IPS_OWNER_SOURCE && (s->flags & IPS_SHADOW_SLOW_SOURCE))
		return pass(IPS_STAT_PASS_SLOW);
	__u32 port = owner == IPS_OWNER_DESTINATION ? s->destination : s->source;
	struct ips_port *p = bpf_map_lookup_elem(&ports, &port);
	if (!p || !p->ifindex || mac_zero(p->mac))
		return pass(IPS_STAT_PASS_NEXT_HOP);
	if (new_flow) {
		struct ips_flow fresh = { .owner = owner, .origin = IPS_ORIGIN_FAST_PATH, .last_seen_ns = now };
		if (bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST))
			return pass(IPS_STAT_FLOW_MAP_FULL);
		count(IPS_STAT_NEW_FLOWS);
	} else if (ip->protocol == IPPROTO_UDP) {
		if (now - flow->last_seen_ns < cfg->udp_batch_ns) {
			__sync_fetch_and_add(&flow->unrecorded_in, 1);
			learn(f, now, 0);
			count(IPS_STAT_INBOUND);
			return to_vm(cfg, f, port);
		}
		/* Not atomic with the adds: a datagram counted on another CPU meanwhile may be lost
		 * from the counters (never from the forwarding). */
		packets += flow->unrecorded_in;
		flow->unrecorded_in = 0;
		flow->last_seen_ns = now;
	} else if (now - flow->last_seen_ns > 1000000) {
		/* Written at most once a millisecond: the line stays shared between CPUs. */
		flow->last_seen_ns = now;
	}
	/* The core learns the client from the replayed frame. */
	learn(f, now, 0);
	record(f, now, IPS_DIR_INBOUND, owner, new_flow, packets);
	count(IPS_STAT_INBOUND);
	return to_vm(cfg, f, port);
}

static __always_inline int to_provider(const struct ips_config *cfg, struct frame *f, struct ips_neighbour *n)
{
	mac_copy(f->eth->h_dest, n->mac);
	mac_copy(f->eth->h_source, cfg->provider_mac);
	return bpf_redirect_map(&tx_ports, IPS_PROVIDER_SLOT, 0);
}

static __always_inline int from_vm(const struct ips_config *cfg, struct frame *f, __u32 vm, __u64 now)
{
	struct iphdr *ip = f->ip;
	if (!mac_eq(f->eth->h_dest, cfg->vm_side_mac))
		return pass(IPS_STAT_PASS_NOT_FOR_US);
	/* DHCP to the server on the router's host stays on the VM segment. */
	if (ip->protocol == IPPROTO_UDP && f->dst_port == 67)
		return pass(IPS_STAT_PASS_LOCAL);
	struct ips_shadow *s = bpf_map_lookup_elem(&shadows, &ip->saddr);
	if (!s) {
		if (cfg->flags & IPS_CFG_ROUTES_SLOW)
			return pass(IPS_STAT_PASS_SLOW);
		/* Anti-spoofing: only from an address this VM holds. */
		struct ips_route *r = bpf_map_lookup_elem(&routes, &ip->saddr);
		if (!r || r->port != vm)
			return pass(IPS_STAT_PASS_NO_ROUTE);
		struct ips_neighbour *n = bpf_map_lookup_elem(&neighbours, &ip->daddr);
		if (!n)
			return pass(IPS_STAT_PASS_NEXT_HOP);
		count(IPS_STAT_ROUTED_OUT);
		return to_provider(cfg, f, n);
	}
	if (s->flags & IPS_SHADOW_SLOW)
		return pass(IPS_STAT_PASS_SLOW);
	__u8 side;
	if (vm == s->source)
		side = IPS_OWNER_SOURCE;
	else if (vm == s->destination)
		side = IPS_OWNER_DESTINATION;
	else
		return pass(IPS_STAT_PASS_NO_ROUTE);
	if (side == IPS_OWNER_SOURCE && (s->flags & IPS_SHADOW_SLOW_SOURCE))
		return pass(IPS_STAT_PASS_SLOW);
	struct ips_flow_key key = {
		.client_ip = ip->daddr,
		.shadow_ip = ip->saddr,
		.client_port = f->dst_port,
		.shadow_port = f->src_port,
		.protocol = ip->protocol,
	};
	/* The egress arbiter: only the owner's frames leave here; the rest (the other VM's, a
	 * VM's SYN, flows not known yet) the core arbitrates. */
	struct ips_flow *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow || flow->owner != side || (ip->protocol == IPPROTO_TCP && (f->tcp_flags & TCP_SYN) && !(f->tcp_flags & TCP_ACK)))
		return pass(IPS_STAT_PASS_FLOW);
	struct ips_neighbour *n = bpf_map_lookup_elem(&neighbours, &ip->daddr);
	if (!n)
		return pass(IPS_STAT_PASS_NEXT_HOP);
	__u32 packets = 1;
	if (ip->protocol == IPPROTO_UDP) {
		if (now - flow->recorded_out_ns < cfg->udp_batch_ns) {
			__sync_fetch_and_add(&flow->unrecorded_out, 1);
			count(IPS_STAT_EGRESS);
			return to_provider(cfg, f, n);
		}
		packets += flow->unrecorded_out;
		flow->unrecorded_out = 0;
		flow->recorded_out_ns = now;
	} else if (now - flow->last_seen_ns > 1000000) {
		flow->last_seen_ns = now;
	}
	record(f, now, IPS_DIR_EGRESS, (__u8)vm, 0, packets);
	count(IPS_STAT_EGRESS);
	return to_provider(cfg, f, n);
}

SEC("xdp")
int ipshadow_fast_path(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct ips_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !(cfg->flags & IPS_CFG_ENABLED))
		return pass(IPS_STAT_PASS_DISABLED);
	__u64 now = bpf_ktime_get_ns();
	if (now >= cfg->active_until_ns)
		return pass(IPS_STAT_PASS_DISABLED);
	struct frame f = {};
	int up = parse(ctx, &f);
	if (up >= 0)
		return pass(up);
	__u32 ifindex = ctx->ingress_ifindex;
	if (ifindex == cfg->provider_ifindex)
		return from_provider(cfg, &f, now);
	__u32 *vm = bpf_map_lookup_elem(&vm_ifindexes, &ifindex);
	if (!vm)
		return pass(IPS_STAT_PASS_NOT_FOR_US);
	return from_vm(cfg, &f, *vm, now);
}
