// The XDP program of bench/xdp/xdpgen.c: run by the kernel once per frame (BPF_PROG_RUN with
// BPF_F_TEST_XDP_LIVE_FRAMES), it writes a whole generator frame -- the same layout as
// crates/dataplane/examples/pktgen.rs: Ethernet/IPv4/UDP, magic, sequence number, send time --
// and transmits it (XDP_TX: out of the interface the run names, through its ndo_xdp_xmit).
//
// The headers are written in full for every frame, not only the fields that change: the frames'
// pages are recycled from the receivers, and a forwarder may have rewritten them (MACs, a NAT's
// destination address) on the way.
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/// Ethernet (14) + IPv4 (20) + UDP (8) + magic (4) + sequence number (8) + send time (8).
#define HEAD 62
#define SRC_PORT_AT 34
#define CHECKSUM_AT 40
#define SEQ_AT 46
#define TIME_AT 54

struct tmpl {
	__u8 head[64];
	/// The UDP checksum's sum over everything that does not change, source port and sequence
	/// number and send time counted as zero (RFC 768, with the pseudo-header).
	__u64 udp_base;
	__u32 flows;
	__u32 first_src_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tmpl);
} template_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seq_map SEC(".maps");

static __always_inline __u64 words(__u64 v)
{
	return (v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff);
}

SEC("xdp")
int xdpgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct tmpl *t = bpf_map_lookup_elem(&template_map, &zero);
	__u64 *seqp = bpf_map_lookup_elem(&seq_map, &zero);
	if (!t || !seqp || data + HEAD > end)
		return XDP_ABORTED;
	// One sending thread: a plain increment is enough.
	__u64 seq = ++*seqp;
	__u64 now = bpf_ktime_get_ns(); // CLOCK_MONOTONIC, as the sink reads it
	__u16 port = t->first_src_port + (__u32)(seq % t->flows);
	__builtin_memcpy(data, t->head, HEAD);
	*(__u16 *)(data + SRC_PORT_AT) = bpf_htons(port);
	*(__u64 *)(data + SEQ_AT) = bpf_cpu_to_be64(seq);
	*(__u64 *)(data + TIME_AT) = bpf_cpu_to_be64(now);
	__u64 sum = t->udp_base + port + words(seq) + words(now);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	__u16 check = ~sum & 0xffff;
	// RFC 768: a computed zero is sent as all ones (zero means "no checksum").
	*(__u16 *)(data + CHECKSUM_AT) = bpf_htons(check ? check : 0xffff);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
