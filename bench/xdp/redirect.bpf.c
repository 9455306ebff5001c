// The ceiling of bench/forward-vs-nftables.sh: a bare XDP redirect, every frame from one
// interface out of another (bpf_redirect), with the MAC rewrite any forwarder does and nothing
// else: no parsing, no lookup, no split. Built by the script once per direction:
//   clang -O2 -target bpf -DOUT_IFINDEX=N -DDST_MAC=0x02,0xbe,... -DSRC_MAC=... -c redirect.bpf.c
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static const unsigned char dst_mac[6] = {DST_MAC};
static const unsigned char src_mac[6] = {SRC_MAC};

SEC("xdp")
int redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + 14 > end)
		return XDP_DROP;
	__builtin_memcpy(data, dst_mac, 6);
	__builtin_memcpy(data + 6, src_mac, 6);
	return bpf_redirect(OUT_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
