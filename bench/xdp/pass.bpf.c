// XDP_PASS for every frame: what `xdp-bench pass` attaches, for bench/forward-vs-nftables.sh.
// A veth that receives frames from its peer's ndo_xdp_xmit (an XDP_REDIRECT into the peer,
// xdpgen's frames) needs its NAPI on, or they are dropped; an XDP program on it turns NAPI on
// without GRO (GRO on the veth would too, but would also merge TCP segments at the receiver).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
