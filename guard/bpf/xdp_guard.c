// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
// txgate-guard: drops packets from banned sources towards the protected ports, in XDP.
//
// Maps (BTF-defined, loaded by the Rust agent with aya):
//   bans4 / bans6  LRU hash: source address (network order) -> expiry, CLOCK_MONOTONIC ns.
//   bans6net       LRU hash: the first 64 bits of an IPv6 source (as in the packet) -> expiry.
//                  The penalty box bans an IPv6 client by its /64 (one subscriber holds a whole
//                  /64), and so does the agent; a single IPv6 address only where the /64 must
//                  not go with it (the node's own link). A source is looked up whole, then by /64.
//                  Pinned by name in bpffs, so a restart of the agent keeps the bans. An expired
//                  entry is deleted by the program itself when it meets one: bans lift in the
//                  kernel, with or without the agent.
//   ports          array of 65536 u8: 1 = protected destination port (TCP and UDP).
//   stats          per-CPU u64 counters, indices below.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define STAT_DROPPED 0
#define STAT_PASSED 1
#define STAT_EXPIRED 2
#define STAT_BANNED_OTHER_PORT 3
#define STAT_COUNT 4

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} bans4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct in6_addr);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} bans6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} bans6net SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 index) {
    __u64 *v = bpf_map_lookup_elem(&stats, &index);
    if (v)
        *v += 1;
}

static __always_inline int pass(void) {
    count(STAT_PASSED);
    return XDP_PASS;
}

// Destination port of a TCP or UDP header at l4; -1 when it cannot be read (other protocols or
// a truncated packet), -2 for a non-first fragment (no L4 header at all).
static __always_inline int dest_port(void *l4, void *end, __u8 proto) {
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > end)
            return -1;
        return bpf_ntohs(tcp->dest);
    }
    if (proto == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > end)
            return -1;
        return bpf_ntohs(udp->dest);
    }
    return -1;
}

// The verdict for a source found in a ban map with expiry *until.
static __always_inline int judge(void *map, void *key, __u64 *until, int port) {
    if (*until <= bpf_ktime_get_ns()) {
        bpf_map_delete_elem(map, key);
        count(STAT_EXPIRED);
        return pass();
    }
    if (port == -2) {
        // A non-first fragment of a banned source: its ports are unknown, it is dropped.
        count(STAT_DROPPED);
        return XDP_DROP;
    }
    if (port < 0)
        return pass();
    __u32 p = (__u32)port;
    __u8 *protected = bpf_map_lookup_elem(&ports, &p);
    if (protected && *protected) {
        count(STAT_DROPPED);
        return XDP_DROP;
    }
    count(STAT_BANNED_OTHER_PORT);
    return pass();
}

SEC("xdp")
int txgate_guard(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return pass();
    __u16 proto = eth->h_proto;
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return pass();
        __u32 src = ip->saddr;
        __u64 *until = bpf_map_lookup_elem(&bans4, &src);
        if (!until)
            return pass();
        __u32 ihl = ip->ihl * 4;
        if (ihl < sizeof(*ip))
            return pass();
        int port;
        if (ip->frag_off & bpf_htons(0x1fff))
            port = -2;
        else
            port = dest_port((void *)ip + ihl, end, ip->protocol);
        return judge(&bans4, &src, until, port);
    }
    if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return pass();
        struct in6_addr src = ip6->saddr;
        __u64 net;
        __builtin_memcpy(&net, &src, sizeof(net)); // the /64: the address's first 8 bytes
        __u64 *until = bpf_map_lookup_elem(&bans6, &src);
        __u64 *until_net = until ? 0 : bpf_map_lookup_elem(&bans6net, &net);
        if (!until && !until_net)
            return pass();
        // Extension headers are not walked: a banned source with one (a fragment, say) is
        // dropped, as its port cannot be read here.
        int port = (ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP)
                       ? dest_port(ip6 + 1, end, ip6->nexthdr)
                       : (ip6->nexthdr == IPPROTO_ICMPV6 ? -1 : -2);
        if (until)
            return judge(&bans6, &src, until, port);
        return judge(&bans6net, &net, until_net, port);
    }
    return pass();
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
