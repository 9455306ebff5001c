// xdpgen: a packet generator that is not the bound of bench/forward-vs-nftables.sh. The kernel
// builds and transmits the frames itself (BPF_PROG_RUN of xdpgen.bpf.c in live-frames mode, out
// of --iface through its ndo_xdp_xmit): no socket, no skb, a few tens of ns per frame. The frames
// are pktgen's (crates/dataplane/examples/pktgen.rs: same layout, magic, sequence number and send
// time, correct UDP checksum), so `pktgen sink` counts them; flows are a cycle of source ports.
//
// It cannot pace: it sends flat out for --seconds and prints one JSON object, as `pktgen send`
// does: {"sent": frames run, "seconds": ..., "pps": ...}. Frames a full receive ring refused are
// in "sent" (the kernel does not report them to the sender); count deliveries at the sink.
//
// Why not xdp-trafficgen (Debian's xdp-tools 1.3.1): it builds IPv6 frames only, with a hop
// limit of 1 (nothing can forward them), and it does not load on kernels from 6.12 on (its object
// holds a program for the removed tracepoint xdp_redirect_map_err).
//
//   xdpgen --obj xdpgen.bpf.o --iface IF --src-mac MAC --dst-mac MAC --src-ip IP --dst-ip IP
//          [--dst-port 9] [--src-port 10000] [--flows 1024] [--size 64] [--seconds 5]
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define HEAD 62
#define MAX_FRAME 1514

struct tmpl {
	uint8_t head[64];
	uint64_t udp_base;
	uint32_t flows;
	uint32_t first_src_port;
};

static void fail(const char *what)
{
	fprintf(stderr, "xdpgen: %s\n", what);
	exit(1);
}

static void parse_mac(const char *s, uint8_t *mac)
{
	if (sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4],
		   &mac[5]) != 6)
		fail("a MAC address is AA:BB:CC:DD:EE:FF");
}

static uint64_t sum_words(const uint8_t *p, size_t n)
{
	uint64_t sum = 0;
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint64_t)p[i] << 8 | p[i + 1];
	if (n & 1)
		sum += (uint64_t)p[n - 1] << 8;
	return sum;
}

static uint16_t fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	const char *obj_path = NULL, *iface = NULL;
	uint8_t src_mac[6] = {0}, dst_mac[6] = {0};
	struct in_addr src_ip = {0}, dst_ip = {0};
	unsigned dst_port = 9, src_port = 10000, flows = 1024, size = 64;
	double seconds = 5;
	static const struct option opts[] = {
		{"obj", required_argument, 0, 'o'},     {"iface", required_argument, 0, 'i'},
		{"src-mac", required_argument, 0, 'M'}, {"dst-mac", required_argument, 0, 'm'},
		{"src-ip", required_argument, 0, 'A'},  {"dst-ip", required_argument, 0, 'a'},
		{"dst-port", required_argument, 0, 'p'}, {"src-port", required_argument, 0, 'P'},
		{"flows", required_argument, 0, 'f'},   {"size", required_argument, 0, 's'},
		{"seconds", required_argument, 0, 't'}, {0, 0, 0, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'o': obj_path = optarg; break;
		case 'i': iface = optarg; break;
		case 'M': parse_mac(optarg, src_mac); break;
		case 'm': parse_mac(optarg, dst_mac); break;
		case 'A': if (inet_pton(AF_INET, optarg, &src_ip) != 1) fail("bad --src-ip"); break;
		case 'a': if (inet_pton(AF_INET, optarg, &dst_ip) != 1) fail("bad --dst-ip"); break;
		case 'p': dst_port = strtoul(optarg, NULL, 10); break;
		case 'P': src_port = strtoul(optarg, NULL, 10); break;
		case 'f': flows = strtoul(optarg, NULL, 10); break;
		case 's': size = strtoul(optarg, NULL, 10); break;
		case 't': seconds = strtod(optarg, NULL); break;
		default: fail("unknown option (see the file's header)");
		}
	}
	if (!obj_path || !iface || !src_ip.s_addr || !dst_ip.s_addr)
		fail("--obj, --iface, --src-ip and --dst-ip are required");
	if (size < HEAD + 2 || size > MAX_FRAME || flows == 0 || flows > 65536 || dst_port > 65535 ||
	    src_port > 65535 || seconds <= 0)
		fail("--size 64..1514, --flows 1..65536, ports 0..65535, --seconds > 0");
	unsigned ifindex = if_nametoindex(iface);
	if (!ifindex)
		fail("no such interface");

	// The frame, as pktgen's Template builds it (sequence number, time, port and checksum zero).
	uint8_t frame[MAX_FRAME] = {0};
	memcpy(frame, dst_mac, 6);
	memcpy(frame + 6, src_mac, 6);
	frame[12] = 0x08;
	uint16_t ip_len = size - 14, udp_len = ip_len - 20;
	frame[14] = 0x45;
	frame[16] = ip_len >> 8, frame[17] = ip_len & 0xff;
	frame[20] = 0x40; // don't fragment
	frame[22] = 64;   // TTL
	frame[23] = 17;   // UDP
	memcpy(frame + 26, &src_ip, 4);
	memcpy(frame + 30, &dst_ip, 4);
	uint16_t ip_sum = ~fold(sum_words(frame + 14, 20));
	frame[24] = ip_sum >> 8, frame[25] = ip_sum & 0xff;
	frame[36] = dst_port >> 8, frame[37] = dst_port & 0xff;
	frame[38] = udp_len >> 8, frame[39] = udp_len & 0xff;
	memcpy(frame + 42, "IPSG", 4);
	struct tmpl t = {.flows = flows, .first_src_port = src_port};
	memcpy(t.head, frame, 64);
	t.udp_base = sum_words(frame + 26, 8) + 17 + udp_len + sum_words(frame + 34, size - 34);

	libbpf_set_print(NULL);
	struct bpf_object *obj = bpf_object__open_file(obj_path, NULL);
	if (!obj || bpf_object__load(obj))
		fail("cannot load the XDP object (root? kernel >= 5.18?)");
	int prog = bpf_program__fd(bpf_object__find_program_by_name(obj, "xdpgen"));
	int tmpl_fd = bpf_object__find_map_fd_by_name(obj, "template_map");
	uint32_t zero = 0;
	if (prog < 0 || tmpl_fd < 0 || bpf_map_update_elem(tmpl_fd, &zero, &t, 0))
		fail("cannot set the frame template");

	struct xdp_md ctx_in = {.data_end = size, .ingress_ifindex = ifindex};
	LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = frame, .data_size_in = size,
		    .ctx_in = &ctx_in, .ctx_size_in = sizeof(ctx_in),
		    .flags = BPF_F_TEST_XDP_LIVE_FRAMES, .repeat = 1 << 15, .batch_size = 64);
	uint64_t sent = 0;
	double start = now_s(), elapsed = 0;
	// Runs of 32k frames (a few ms each) until the time is up.
	while ((elapsed = now_s() - start) < seconds) {
		int err = bpf_prog_test_run_opts(prog, &run);
		if (err) {
			fprintf(stderr, "xdpgen: BPF_PROG_RUN: %s\n", strerror(-err));
			return 1;
		}
		sent += run.repeat;
	}
	printf("{\"sent\": %llu, \"seconds\": %.3f, \"pps\": %.0f}\n", (unsigned long long)sent, elapsed,
	       sent / elapsed);
	return 0;
}
