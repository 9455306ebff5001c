/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The maps shared by ipshadow's XDP program and the router in user space: their layouts, in one
 * place. src/abi.rs encodes and decodes exactly these bytes (checked by its tests); change both.
 *
 * Byte order: addresses are kept as they are on the wire (network order), everything else in the
 * host's order. A flow key is oriented client -> shadowed address, as the core's FlowKey.
 */
#ifndef IPSHADOW_ABI_H
#define IPSHADOW_ABI_H

#include <linux/types.h>

/* VM ports are 0..IPS_MAX_VM_PORTS-1 (the core's VmRef); the provider port is its own slot of the
 * device map. */
#define IPS_MAX_VM_PORTS 63
#define IPS_PROVIDER_SLOT 63
#define IPS_DEVMAP_SLOTS 64

/* config.flags */
#define IPS_CFG_ENABLED 1u     /* clear: every frame goes up to user space */
#define IPS_CFG_ROUTES_SLOW 2u /* frames of addresses not shadowed go up (flows closed at a cut-over are still answered there) */

struct ips_config {
	__u64 active_until_ns; /* forward only while bpf_ktime_get_ns() is below (a paused router stops) */
	__u64 udp_batch_ns;    /* a UDP flow's datagrams are recorded at most this often each way */
	__u32 flags;
	__u32 provider_ifindex;
	__u8 provider_mac[6];
	__u8 vm_side_mac[6];
	__u32 pad;
};

struct ips_port {
	__u32 ifindex; /* 0: no such port */
	__u8 mac[6];   /* the VM's MAC; all zero: not known yet (its frames go up) */
	__u16 pad;
};

/* shadow.flags */
#define IPS_SHADOW_SLOW 1u            /* every frame of this address goes up */
#define IPS_SHADOW_CLIENT_AFFINITY 2u /* a new flow's side hashes the client address alone */
#define IPS_SHADOW_SLOW_SOURCE 4u     /* the frames of A's flows go up (the closing window) */

struct ips_shadow {
	__u64 salt;
	__u64 threshold; /* a new flow whose split hash is below goes to B (2^32: every one) */
	__u32 source;    /* VM port of A */
	__u32 destination; /* VM port of B */
	__u32 flags;
	__u32 pad;
};

struct ips_route {
	__u32 port; /* the VM port that holds the address */
	__u32 pad;
};

struct ips_flow_key {
	__u32 client_ip; /* network order */
	__u32 shadow_ip; /* network order */
	__u16 client_port;
	__u16 shadow_port;
	__u8 protocol;
	__u8 pad[3];
};

#define IPS_OWNER_SOURCE 0
#define IPS_OWNER_DESTINATION 1
/* The core tracks the flow but does not know its owner yet (a mid-stream segment after a restart,
 * delivered to both VMs until one answers): its frames, a SYN on its tuple included, go up. */
#define IPS_OWNER_UNKNOWN 2

/* flow.origin */
#define IPS_ORIGIN_CORE 0      /* written by the router's core */
#define IPS_ORIGIN_FAST_PATH 1 /* a new flow the program decided */

struct ips_flow {
	__u8 owner;
	__u8 origin;
	__u16 pad;
	__u32 unrecorded_in;  /* UDP: datagrams to the VM forwarded since the last record that way */
	__u32 unrecorded_out; /* UDP: datagrams from the VM forwarded since the last record that way */
	__u32 pad2;
	__u64 last_seen_ns;   /* TCP: last forwarded (to the millisecond); UDP: last recorded inbound */
	__u64 recorded_out_ns; /* UDP: last recorded from the VM */
};

struct ips_neighbour {
	__u8 mac[6];
	__u16 pad;
};

/* record.direction */
#define IPS_DIR_INBOUND 0
#define IPS_DIR_EGRESS 1
/* Not a frame: a client's MAC the program learned (new or changed) from a frame it routed to an
 * address a VM holds alone, which the core does not replay; src and src_mac say who is where. */
#define IPS_DIR_NEIGHBOUR 2

/* One frame the program forwarded to or from a shadowed address, for the core to replay (or a
 * neighbour it learned, IPS_DIR_NEIGHBOUR). */
struct ips_record {
	__u64 at_ns;        /* bpf_ktime_get_ns() */
	__u32 src;          /* network order */
	__u32 dst;          /* network order */
	__u16 src_port;
	__u16 dst_port;
	__u32 seq;
	__u32 ack;
	__u16 payload_len;
	__u16 ident;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 direction;
	__u8 port;          /* inbound: the side delivered (IPS_OWNER_*); egress: the VM port */
	__u8 new_flow;      /* the program created the flow */
	__u8 pad;
	__u8 src_mac[6];
	__u32 packets;      /* frames this record stands for (UDP: a batch of one flow's datagrams) */
};

/* Per-CPU counters, indexes of the "stats" array. */
enum ips_stat {
	IPS_STAT_INBOUND = 0,     /* to a shadowed address, delivered */
	IPS_STAT_EGRESS,          /* from a shadowed address's owner, sent */
	IPS_STAT_ROUTED_IN,       /* to an address a VM holds alone */
	IPS_STAT_ROUTED_OUT,      /* from one */
	IPS_STAT_NEW_FLOWS,       /* flows the program decided */
	IPS_STAT_RECORDS_LOST,    /* records the ring had no room for (user space behind) */
	IPS_STAT_FLOW_MAP_FULL,   /* a new flow the map refused: up to user space */
	IPS_STAT_PASS_DISABLED,   /* up: the program is switched off, or the router paused */
	IPS_STAT_PASS_NOT_IPV4,   /* up: ARP, VLAN, IPv6 ... */
	IPS_STAT_PASS_MALFORMED,  /* up: the core counts and drops it */
	IPS_STAT_PASS_FRAGMENT,
	IPS_STAT_PASS_PROTOCOL,   /* up: not TCP or UDP (ICMP ...) */
	IPS_STAT_PASS_NOT_FOR_US, /* up: another destination MAC, unknown port */
	IPS_STAT_PASS_SLOW,       /* up: the address's frames all go up for now */
	IPS_STAT_PASS_NO_ROUTE,   /* up: an address neither shadowed nor routed, or a VM sending as another */
	IPS_STAT_PASS_FLOW,       /* up: unknown flow, not its owner, or a SYN on a known one */
	IPS_STAT_PASS_NEXT_HOP,   /* up: the neighbour's or the VM's MAC is not known yet */
	IPS_STAT_PASS_LOCAL,      /* up: DHCP to the router's host */
	IPS_STAT_PASS_CHECKSUM,   /* up: a TCP/UDP checksum left to offload (a veth or tap sender) */
	IPS_STAT_COUNT
};

#endif
