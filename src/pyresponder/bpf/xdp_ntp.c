// SPDX-License-Identifier: MIT
/*
 * pyresponder's XDP fast path: answers plain NTP client requests at the driver with XDP_TX.
 *
 * Only the common case is handled here: Ethernet + IPv4 without options or fragments, or IPv6
 * without extension headers, unicast, UDP to the configured port, exactly 48 bytes of payload,
 * and a first byte the control plane marked answerable (version 1-4, mode 3). Everything else
 * goes up the stack unchanged (XDP_PASS) to the socket path, which knows every other rule.
 *
 * The reply fields come from user space (`pyresponder xdp`), which derives them from the same
 * pure code the socket path uses (syncstate.evaluate, wire.server_header) and writes them into
 * one of two slots, then flips the active index: the program never sees a half-written state.
 *
 * Build: clang -O2 -g -target bpf -I/usr/include/$(uname -m)-linux-gnu -c xdp_ntp.c
 * Needs kernel >= 6.1 (bpf_ktime_get_tai_ns).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define NTP_LEN 48
#define HEADER_LEN 24 /* the server part of a reply: leap .. reference timestamp */
#define NTP_UNIX_OFFSET 2208988800ULL
#define NS_PER_S 1000000000ULL
/* Nanoseconds to 2^-32 s units as (ns * FRACTION_MUL) >> 30, as wire.FRACTION_MUL does. */
#define FRACTION_MUL ((1ULL << 62) / NS_PER_S)
#define REPLY_TTL 64
#define IP_FRAGMENT_BITS 0x3fff /* MF flag and fragment offset */

/* Mirrored in xdp_maps.py (struct formats); _Static_asserts pin the sizes. */
struct pyr_control {
	__u32 active;  /* 0: never written (pass everything); 1 or 2: slot active-1 is current */
	__u16 port_be; /* UDP port to answer, network order */
	__u16 reserved;
	__u8 answer[256]; /* 1 where a request with this first byte gets a mode-4 reply here */
	/* Per-client rate limit (ratelimit.py's rules; 0 interval = off): a theoretical arrival
	 * time per address, admitted while at most window ahead, pushed one interval per reply. */
	__u64 rate_interval_ns;
	__u64 rate_window_ns;   /* (burst - 1) * interval */
	__u64 rate_reset_ns;    /* further ahead than this: a stale entry, start afresh */
	__u32 rate_leak;        /* answer 1 in leak limited requests anyway (0: never) */
	__u32 rate_kod;         /* of the others, 1 in kod gets a kiss-o'-death RATE (0: never) */
};
_Static_assert(sizeof(struct pyr_control) == 296, "pyr_control layout");

struct pyr_slot {
	__u8 header[HEADER_LEN];        /* synchronized reply header, as of written_mono_ns */
	__u8 unsync_header[HEADER_LEN]; /* LI=3 stratum 0 refid 0, served after valid_until */
	__u64 written_mono_ns;          /* CLOCK_MONOTONIC when header was built */
	__u64 valid_until_mono_ns;      /* header is served until then (0: never) */
	__u64 dispersion_mul;           /* root dispersion growth: short units = ns * mul >> 48 */
	__u64 leap_pass_from_ns;        /* UTC ns: pass to user space from ... */
	__u64 leap_pass_until_ns;       /* ... until (both 0: no leap second pending) */
	__s64 tai_offset_ns;            /* CLOCK_TAI - CLOCK_REALTIME at write time */
};
_Static_assert(sizeof(struct pyr_slot) == 96, "pyr_slot layout");

enum pyr_counter {
	C_RECEIVED = 0,  /* UDP datagrams to the port the program looked at */
	C_ANSWERED,      /* answered here with XDP_TX */
	C_ANSWERED_UNSYNC, /* of those, answered "unsynchronized" (LI=3) */
	C_PASS_SHAPE,    /* not a plain 48-byte request the kernel answers (mode, version, length) */
	C_PASS_IP,       /* IPv4 options or fragment, IPv6 extension header, not unicast */
	C_PASS_NO_STATE, /* no time state written yet */
	C_PASS_LEAP,     /* close to a leap second */
	C_RESERVED,
	C_RATE_LIMITED,  /* over the per-client limit */
	C_KOD_SENT,      /* of those, answered with a kiss-o'-death RATE */
	C_COUNT = 10,
};

struct pyr_counters {
	__u64 c[C_COUNT];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pyr_control);
} pyr_control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pyr_slot);
} pyr_slots SEC(".maps");

/* One client's bucket, as in ratelimit.RateLimiter: a theoretical arrival time and how many of
 * this client's requests were over the limit (the leak and KoD choices depend on that count only,
 * never on what other clients send). */
struct pyr_bucket {
	__u64 arrival_ns;
	__u32 limited;
	__u32 unused;
};
_Static_assert(sizeof(struct pyr_bucket) == 16, "pyr_bucket has no padding");

/* Client address (IPv4 as ::ffff:a.b.c.d) -> theoretical arrival time (CLOCK_MONOTONIC ns).
 * An LRU map: a flood of spoofed sources evicts old entries instead of growing; the evicted
 * client starts afresh (the limiter fails open, as the socket path's table does). Size set by
 * the control plane (--rate-limit-slots) before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct in6_addr);
	__type(value, struct pyr_bucket);
} pyr_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pyr_counters);
} pyr_counters SEC(".maps");

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void ipv4_checksum(struct iphdr *ip)
{
	__u16 *words = (__u16 *)ip;
	__u64 sum = 0;

	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += words[i];
	ip->check = csum_fold(sum);
}

static __always_inline __u64 ntp_timestamp(__u64 unix_ns)
{
	__u64 seconds = unix_ns / NS_PER_S;
	__u64 fraction = ((unix_ns - seconds * NS_PER_S) * FRACTION_MUL) >> 30;

	return ((seconds + NTP_UNIX_OFFSET) << 32) | (fraction & 0xffffffffULL);
}

static __always_inline void count(struct pyr_counters *counters, int which)
{
	if (counters)
		counters->c[which]++;
}

enum { RATE_ANSWER = 0, RATE_KOD, RATE_DROP };

/* The fate of a request from `key` under the rate limit (control->rate_interval_ns != 0). */
static __always_inline int rate_limit(struct pyr_control *control,
				      struct pyr_counters *counters, struct in6_addr *key)
{
	__u64 now = bpf_ktime_get_ns();
	struct pyr_bucket *stored = bpf_map_lookup_elem(&pyr_rate, key);
	__u64 arrival = stored ? stored->arrival_ns : now;
	__u32 limited = stored ? stored->limited : 0;

	if (arrival < now || arrival - now > control->rate_reset_ns) {
		arrival = now; /* new, idle or stale: a fresh bucket */
		limited = 0;
	}
	if (arrival - now <= control->rate_window_ns) {
		struct pyr_bucket next = { .arrival_ns = arrival + control->rate_interval_ns,
					   .limited = limited };
		if (stored)
			*stored = next; /* racy across CPUs, like the socket path's table: approximate */
		else
			bpf_map_update_elem(&pyr_rate, key, &next, BPF_ANY);
		return RATE_ANSWER;
	}
	limited++;
	if (stored)
		stored->limited = limited; /* only the count: keep another CPU's admission */
	if (counters)
		counters->c[C_RATE_LIMITED]++;
	__u32 leak = control->rate_leak, kod = control->rate_kod;
	if (leak && limited % leak == 0)
		return RATE_ANSWER;
	__u32 refused = limited - (leak ? limited / leak : 0);
	if (kod && refused % kod == 0)
		return RATE_KOD;
	return RATE_DROP;
}

SEC("xdp")
int pyresponder_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = 0;
	struct ipv6hdr *ip6 = 0;
	struct udphdr *udp;
	int is_ipv6;
	__u32 zero = 0;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		ip4 = (void *)(eth + 1);
		if ((void *)(ip4 + 1) > data_end || ip4->protocol != IPPROTO_UDP)
			return XDP_PASS;
		is_ipv6 = 0;
		udp = (void *)(ip4 + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS; /* also every extension header: the stack handles those */
		is_ipv6 = 1;
		udp = (void *)(ip6 + 1);
	} else {
		return XDP_PASS;
	}
	/* A request with IPv4 options puts the UDP header elsewhere: the port check below would
	 * read option bytes. Such packets fail ihl == 5 before anything is answered. */
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;

	struct pyr_control *control = bpf_map_lookup_elem(&pyr_control, &zero);
	if (!control || udp->dest != control->port_be)
		return XDP_PASS;

	struct pyr_counters *counters = bpf_map_lookup_elem(&pyr_counters, &zero);
	count(counters, C_RECEIVED);

	if (eth->h_dest[0] & 1) { /* multicast or broadcast frame */
		count(counters, C_PASS_IP);
		return XDP_PASS;
	}
	if (!is_ipv6) {
		/* Neither address may be multicast (224/4), limited broadcast or (as a source, which
		 * the reply goes to) 0/8 or loopback: those are the socket path's to refuse. */
		if (!ip4 || ip4->ihl != 5 || ip4->version != 4 ||
		    (ip4->frag_off & bpf_htons(IP_FRAGMENT_BITS)) ||
		    (ip4->daddr & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) ||
		    ip4->daddr == 0xffffffff ||
		    (ip4->saddr & bpf_htonl(0xf0000000)) >= bpf_htonl(0xe0000000) ||
		    (ip4->saddr & bpf_htonl(0xff000000)) == 0 ||
		    (ip4->saddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000)) {
			count(counters, C_PASS_IP);
			return XDP_PASS;
		}
		if (ip4->tot_len != bpf_htons(sizeof(*ip4) + sizeof(*udp) + NTP_LEN)) {
			count(counters, C_PASS_SHAPE);
			return XDP_PASS;
		}
	} else {
		/* Multicast destination or source; unspecified (::) source. */
		if (!ip6 || ip6->daddr.in6_u.u6_addr8[0] == 0xff ||
		    ip6->saddr.in6_u.u6_addr8[0] == 0xff ||
		    (ip6->saddr.in6_u.u6_addr32[0] | ip6->saddr.in6_u.u6_addr32[1] |
		     ip6->saddr.in6_u.u6_addr32[2] | ip6->saddr.in6_u.u6_addr32[3]) == 0) {
			count(counters, C_PASS_IP);
			return XDP_PASS;
		}
		if (ip6->payload_len != bpf_htons(sizeof(*udp) + NTP_LEN)) {
			count(counters, C_PASS_SHAPE);
			return XDP_PASS;
		}
	}
	__u8 *ntp = (void *)(udp + 1);
	/* Source port 0 cannot be answered; the socket path counts and drops it. */
	if (udp->source == 0 || udp->len != bpf_htons(sizeof(*udp) + NTP_LEN) || (void *)(ntp + NTP_LEN) > data_end ||
	    !control->answer[ntp[0]]) {
		count(counters, C_PASS_SHAPE);
		return XDP_PASS;
	}

	__u32 active = control->active;
	if (active != 1 && active != 2) {
		count(counters, C_PASS_NO_STATE);
		return XDP_PASS;
	}
	__u32 slot_index = active - 1;
	struct pyr_slot *slot = bpf_map_lookup_elem(&pyr_slots, &slot_index);
	if (!slot || slot->valid_until_mono_ns == 0) {
		count(counters, C_PASS_NO_STATE);
		return XDP_PASS;
	}

	__u64 receive_ns = bpf_ktime_get_tai_ns() - slot->tai_offset_ns;
	if (slot->leap_pass_until_ns && receive_ns >= slot->leap_pass_from_ns &&
	    receive_ns < slot->leap_pass_until_ns) {
		count(counters, C_PASS_LEAP);
		return XDP_PASS;
	}

	int kiss = 0;
	if (control->rate_interval_ns) {
		struct in6_addr key = {};
		if (is_ipv6 && ip6) {
			/* A /64, as the socket path keys IPv6 clients: one subscriber's prefix. */
			key.in6_u.u6_addr32[0] = ip6->saddr.in6_u.u6_addr32[0];
			key.in6_u.u6_addr32[1] = ip6->saddr.in6_u.u6_addr32[1];
		} else if (ip4) {
			key.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
			key.in6_u.u6_addr32[3] = ip4->saddr;
		}
		int fate = rate_limit(control, counters, &key);
		if (fate == RATE_DROP)
			return XDP_DROP;
		kiss = fate == RATE_KOD;
	}

	/* Build the reply payload on the stack, then take the checksum difference against the
	 * request before overwriting it: ports and addresses only swap, which leaves the UDP sum
	 * unchanged, so the 48 payload bytes are the whole difference. */
	__u64 reply[NTP_LEN / 8];
	__u8 *out = (__u8 *)reply;
	__u64 now_mono = bpf_ktime_get_ns();
	int synchronized = now_mono <= slot->valid_until_mono_ns;

	if (synchronized) {
		__builtin_memcpy(out, slot->header, HEADER_LEN);
		__u64 elapsed = now_mono > slot->written_mono_ns ? now_mono - slot->written_mono_ns : 0;
		__u32 dispersion = bpf_ntohl(*(__u32 *)(slot->header + 8));
		__u64 grown = dispersion + ((elapsed * slot->dispersion_mul) >> 48);
		*(__u32 *)(out + 8) = bpf_htonl(grown > 0xffffffffULL ? 0xffffffffU : (__u32)grown);
	} else {
		__builtin_memcpy(out, slot->unsync_header, HEADER_LEN);
	}
	out[0] = (out[0] & 0xc0) | (ntp[0] & 0x38) | 4; /* leap, request's version, mode 4 */
	out[2] = ntp[2];                                 /* poll echoed */
	__builtin_memcpy(out + 24, ntp + 40, 8);         /* origin = request's transmit, bit for bit */
	/* One clock read serves as receive and transmit time: the whole program takes a few
	 * hundred nanoseconds, and a second read would cost a tenth of that for no client. */
	__u64 timestamp = bpf_cpu_to_be64(ntp_timestamp(receive_ns));
	*(__u64 *)(out + 32) = timestamp;
	*(__u64 *)(out + 40) = timestamp;
	if (kiss) { /* RFC 5905 kiss-o'-death, as the socket path sends it: LI 3, stratum 0, RATE */
		out[0] = 0xc0 | (out[0] & 0x3f);
		out[1] = 0;
		out[12] = 'R';
		out[13] = 'A';
		out[14] = 'T';
		out[15] = 'E';
	}

	if (udp->check) {
		__s64 sum = bpf_csum_diff((__be32 *)ntp, NTP_LEN, (__be32 *)reply, NTP_LEN,
					  ~((__u32)udp->check) & 0xffff);
		__u16 check = csum_fold((__u64)sum);
		udp->check = check ? check : 0xffff;
	} else if (is_ipv6) {
		count(counters, C_PASS_SHAPE); /* IPv6 UDP without checksum is invalid */
		return XDP_PASS;
	}
	__builtin_memcpy(ntp, out, NTP_LEN);

	__u16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;

	if (!is_ipv6) {
		if (!ip4)
			return XDP_PASS;
		__be32 address = ip4->saddr;
		ip4->saddr = ip4->daddr;
		ip4->daddr = address;
		ip4->ttl = REPLY_TTL;
		ipv4_checksum(ip4);
	} else {
		if (!ip6)
			return XDP_PASS;
		struct in6_addr address = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = address;
		ip6->hop_limit = REPLY_TTL;
	}

	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

	count(counters, C_ANSWERED);
	if (kiss)
		count(counters, C_KOD_SENT);
	if ((ntp[0] >> 6) == 3) /* LI=3: too old here, or unsynchronized when written */
		count(counters, C_ANSWERED_UNSYNC);
	return XDP_TX;
}

/* Passes everything. Tests and the benchmark attach it to the client end of a veth pair: native
 * XDP_TX on veth delivers only when the peer device has an XDP program too. */
SEC("xdp")
int pyresponder_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
