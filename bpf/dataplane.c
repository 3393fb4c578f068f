/* Data-plane programs of the gateway, compiled once per start by bpf/loader.py (bcc).
 *
 *   xdp_wan         XDP, WAN ingress: parse, count ESP per Child SA slot, drop unknown
 *                   SPIs (optional), IKE_SA_INIT shield: a token bucket per source and
 *                   a global budget (optional), cpumap steering per slot (optional).
 *   tc_wan_egress   TC clsact egress on the WAN: count outbound ESP per slot.
 *   tc_lan_ingress  TC clsact ingress on the LAN: count cleartext per slot (destination
 *                   prefix -> slot through an LPM trie) and clamp the MSS of SYN/SYN-ACK.
 *   tc_lan_egress   TC clsact egress on the LAN: the same for cleartext leaving a tunnel
 *                   (source prefix -> slot), so the remote side's MSS is clamped too.
 *
 * Every packet ends in exactly one reason code (dataplane.h) counted with its action in
 * the `verdicts` map, so the sum over reasons equals the packets a program saw.
 * The LAN program is TC rather than XDP because TC knows the skb's checksum state:
 * bpf_l4_csum_replace() leaves CHECKSUM_PARTIAL packets (locally generated, offloaded
 * checksum) alone and updates full checksums incrementally (RFC 1624).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#include "dataplane.h"

#ifndef CPUMAP_SIZE
#define CPUMAP_SIZE 64
#endif

#define IKE_PORT 500
#define NATT_PORT 4500
#define IKE_HEADER_LEN 28
#define IKE_SA_INIT 34        /* RFC 7296 3.1 exchange type */
#define IKE_FLAG_RESPONSE 0x20
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 6
#define MAX_TCP_OPTIONS 40
#define PULL_LEN 256          /* TC: make sure headers are in the linear area */
#define MAX_L4_OFF 1024       /* transport headers deeper than this are not looked at */

BPF_ARRAY(config, struct dp_config, 1);
BPF_ARRAY(slot_table, struct slot_entry, MAX_SLOTS);
/* Hash maps without preallocation: with 2^20 slots a preallocated out_spi would take
 * ~100 MiB before the first SA; entries are allocated when the loader adds them. */
BPF_F_TABLE("hash", u32, u32, in_spi_fallback, MAX_IN_SPI_FALLBACK, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", u32, u32, out_spi, MAX_OUT_SPIS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(slot_stats, struct slot_stats, MAX_SLOTS);
BPF_PERCPU_ARRAY(verdicts, u64, R_MAX * VERDICT_ACTIONS);
BPF_LPM_TRIE(clamp_prefixes, struct clamp_key, struct clamp_value, MAX_CLAMP_PREFIXES);
BPF_ARRAY(ike_buckets, struct ike_bucket, IKE_BUCKETS);
BPF_ARRAY(ike_budget, struct ike_budget, 1);
BPF_CPUMAP(cpumap, CPUMAP_SIZE);
BPF_PERCPU_ARRAY(steered, u64, CPUMAP_SIZE); /* ESP redirected, by target CPU */

enum parse_result {
    P_OK = 0,
    P_NON_IP,
    P_BAD_L2,
    P_BAD_IP,
    P_FRAGMENT,   /* non-first fragment: no transport header */
    P_TOO_DEEP,   /* more IPv6 extension headers (or VLAN tags) than we walk */
};

struct pkt {
    void *data;
    void *data_end;
    u32 pkt_len;  /* whole packet incl. non-linear part (TC) */
    u32 l3_off;
    u32 l4_off;
    u32 ip_len;   /* IP bytes per the IP header */
    u8 l4_proto;
    u8 is_v6;
    u8 first_fragment; /* offset 0, more fragments: L4 lengths exceed this packet */
    u8 gso;            /* TC: a GSO/GRO skb (BIG TCP may leave the IP length 0) */
};

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

struct ipv6_frag {
    u8 nexthdr;
    u8 reserved;
    __be16 frag_off;
    __be32 id;
};

struct ike_header {
    u8 spi_i[8];
    u8 spi_r[8];
    u8 next_payload;
    u8 version;
    u8 exchange_type;
    u8 flags;
    __be32 message_id;
    __be32 length;
};

static __always_inline int verdict(u32 reason, int action)
{
    u32 idx = reason * VERDICT_ACTIONS + (u32)action;
    u64 *c = verdicts.lookup(&idx);
    if (c)
        *c += 1;
    return action;
}

/* A pointer `off` bytes into the packet, or NULL when off is beyond MAX_L4_OFF. The
 * empty asm keeps clang from merging this check with earlier ones, so the verifier
 * sees a bounded offset right where the pointer is made. */
static __always_inline void *pkt_at(struct pkt *p, u32 off)
{
    asm volatile("" : "+r"(off));
    if (off > MAX_L4_OFF)
        return NULL;
    return p->data + off;
}

/* An option offset (<= 40 by construction) masked to [0, 63] so the verifier sees it
 * bounded whatever path led here; the empty asm stops clang from dropping the mask as
 * redundant. */
static __always_inline u32 opt_index(u32 off)
{
    asm volatile("" : "+r"(off));
    return off & 63;
}

static __always_inline int tc_verdict(u32 reason, int xdp_action)
{
    verdict(reason, xdp_action);
    return xdp_action == XDP_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Ethernet, up to two VLAN tags (802.1Q / 802.1ad), then IPv4 (options allowed) or
 * IPv6 (extension headers walked). Fills p->l3_off, l4_off, l4_proto, ip_len. */
static __always_inline int parse_l3(struct pkt *p)
{
    void *data = p->data;
    void *data_end = p->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return P_BAD_L2;
    __be16 proto = eth->h_proto;
    void *cur = eth + 1;

#pragma unroll
    for (int i = 0; i < MAX_VLAN_TAGS; i++) {
        if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
            break;
        struct vlan_tag *tag = cur;
        if ((void *)(tag + 1) > data_end)
            return P_BAD_L2;
        proto = tag->proto;
        cur = tag + 1;
    }
    p->l3_off = cur - data;

    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = cur;
        if ((void *)(ip + 1) > data_end)
            return P_BAD_IP;
        if (ip->version != 4 || ip->ihl < 5)
            return P_BAD_IP;
        u32 hl = ip->ihl * 4;
        u32 tot = bpf_ntohs(ip->tot_len);
        if (tot == 0 && p->gso)
            tot = p->pkt_len - p->l3_off;
        if (tot < hl || p->l3_off + tot > p->pkt_len)
            return P_BAD_IP;
        p->ip_len = tot;
        p->l4_off = p->l3_off + hl;
        p->l4_proto = ip->protocol;
        p->is_v6 = 0;
        if (ip->frag_off & bpf_htons(0x1fff))
            return P_FRAGMENT;
        p->first_fragment = (ip->frag_off & bpf_htons(0x2000)) != 0;
        return P_OK;
    }
    if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = cur;
        if ((void *)(ip6 + 1) > data_end)
            return P_BAD_IP;
        if (ip6->version != 6)
            return P_BAD_IP;
        u32 tot = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
        if (tot == sizeof(*ip6) && p->gso)
            tot = p->pkt_len - p->l3_off;
        if (p->l3_off + tot > p->pkt_len)
            return P_BAD_IP;
        p->ip_len = tot;
        p->is_v6 = 1;
        u8 nh = ip6->nexthdr;
        cur = ip6 + 1;
#pragma unroll
        for (int i = 0; i < MAX_IPV6_EXT; i++) {
            if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
                struct ipv6_opt_hdr *opt = cur;
                if ((void *)opt + 8 > data_end)
                    return P_BAD_IP;
                nh = opt->nexthdr;
                cur += (opt->hdrlen + 1) * 8;
            } else if (nh == IPPROTO_FRAGMENT) {
                struct ipv6_frag *fh = cur;
                if ((void *)(fh + 1) > data_end)
                    return P_BAD_IP;
                nh = fh->nexthdr;
                cur = fh + 1;
                if (fh->frag_off & bpf_htons(0xfff8)) {
                    p->l4_proto = nh;
                    p->l4_off = cur - data;
                    return P_FRAGMENT;
                }
                p->first_fragment = (fh->frag_off & bpf_htons(1)) != 0;
            } else {
                break;
            }
        }
        if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
            nh == IPPROTO_FRAGMENT)
            return P_TOO_DEEP;
        if (cur > data_end)
            return P_BAD_IP;
        p->l4_off = cur - data;
        if (p->l4_off > p->l3_off + tot)
            return P_BAD_IP;
        p->l4_proto = nh;
        return P_OK;
    }
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
        return P_TOO_DEEP;
    return P_NON_IP;
}

/* The slot of an inbound SPI: the SPI's low SLOT_BITS name the slot, which must list
 * this SPI (no hash lookup on the fast path). SPIs the daemon could not choose go
 * through the fallback hash. Returns the slot's entry (NULL: not ours) and its index. */
static __always_inline struct slot_entry *inbound_slot(struct dp_config *cfg, u32 spi,
                                                       u32 *slot)
{
    u32 s = spi & SLOT_MASK;
    struct slot_entry *e = slot_table.lookup(&s);
    if (e && spi != 0 && (e->spi[0] == spi || e->spi[1] == spi)) {
        *slot = s;
        return e;
    }
    /* Skip the hash when it is empty: unknown-SPI floods then cost one array lookup. */
    if (!(cfg->flags & CFG_IN_FALLBACK))
        return NULL;
    u32 *fs = in_spi_fallback.lookup(&spi);
    if (!fs)
        return NULL;
    s = *fs & SLOT_MASK;
    *slot = s;
    return slot_table.lookup(&s);
}

static __always_inline int wan_esp(struct xdp_md *ctx, struct dp_config *cfg, struct pkt *p,
                                   u32 spi)
{
    u32 slot = 0;
    struct slot_entry *e = inbound_slot(cfg, spi, &slot);
    if (!e) {
        if (cfg->flags & CFG_DROP_UNKNOWN_SPI)
            return verdict(R_WAN_ESP_UNKNOWN_SPI, XDP_DROP);
        return verdict(R_WAN_ESP_UNKNOWN_SPI, XDP_PASS);
    }
    struct slot_stats *st = slot_stats.lookup(&slot);
    if (st) {
        st->esp_in_packets += 1;
        st->esp_in_bytes += p->ip_len;
    }
    /* Steering to the slot's CPU. The loader leaves cpu at STEER_NONE when steering is
     * off, for SAs the NIC decrypts (the offload metadata would not survive the cpumap
     * hop) and for all when the NIC has ESP offload on: one compare here. */
    u32 cpu = e->cpu;
    /* Already on its CPU (RSS put it there): the stack takes it here, no cpumap hop. An
     * SA's packets arrive on one RX queue, so they all take the same way (no reorder). */
    if (cpu < CPUMAP_SIZE && cpu != bpf_get_smp_processor_id()) {
        int act = cpumap.redirect_map(cpu, XDP_PASS);
        if (act == XDP_REDIRECT) {
            u64 *n = steered.lookup(&cpu);
            if (n)
                *n += 1;
        }
        return verdict(R_WAN_ESP, act);
    }
    return verdict(R_WAN_ESP, XDP_PASS);
}

/* The per-source bucket of a packet: a keyed multiplicative hash of the IPv4 address
 * (or the IPv6 /64), so an attacker cannot aim at a chosen bucket. */
static __always_inline u32 source_bucket(struct dp_config *cfg, struct pkt *p)
{
    void *l3 = pkt_at(p, p->l3_off);
    u32 h = cfg->hash_seed;
    if (!l3)
        return 0;
    if (p->is_v6) {
        struct ipv6hdr *ip6 = l3;
        if ((void *)(ip6 + 1) > p->data_end)
            return 0;
        h = (h ^ ip6->saddr.in6_u.u6_addr32[0]) * 0x9e3779b1u;
        h = (h ^ ip6->saddr.in6_u.u6_addr32[1]) * 0x85ebca6bu;
    } else {
        struct iphdr *ip = l3;
        if ((void *)(ip + 1) > p->data_end)
            return 0;
        h = (h ^ ip->saddr) * 0x9e3779b1u;
    }
    h ^= h >> 16;
    return h & (IKE_BUCKETS - 1);
}

/* Per source: credit accrues with time up to the burst; a request costs cost_ns.
 * Returns 1 to admit. Plain stores: two CPUs on one bucket may both pass (approximate). */
static __always_inline int source_admits(struct dp_config *cfg, struct pkt *p, u64 now)
{
    u32 idx = source_bucket(cfg, p);
    struct ike_bucket *b = ike_buckets.lookup(&idx);
    if (!b)
        return 1;
    u64 credit = b->credit_ns + (now - b->last_ns);
    if (credit > cfg->ike_burst_ns || now < b->last_ns || b->last_ns == 0) /* 0: fresh */
        credit = cfg->ike_burst_ns;
    b->last_ns = now;
    if (credit < cfg->ike_cost_ns) {
        b->credit_ns = credit;
        return 0;
    }
    b->credit_ns = credit - cfg->ike_cost_ns;
    return 1;
}

/* Global: one bucket for all sources, updated atomically (dataplane.h). */
static __always_inline int budget_admits(struct dp_config *cfg, u64 now)
{
    u32 zero = 0;
    struct ike_budget *b = ike_budget.lookup(&zero);
    if (!b)
        return 1;
    u64 last = b->last_ns;
    if (now > last && __sync_val_compare_and_swap(&b->last_ns, last, now) == last) {
        s64 add = last ? (s64)(now - last) : (s64)cfg->budget_burst_ns; /* 0: fresh, full */
        s64 credit = __sync_fetch_and_add(&b->credit_ns, add) + add;
        if (credit > (s64)cfg->budget_burst_ns)
            b->credit_ns = cfg->budget_burst_ns; /* full: the only plain store */
    }
    s64 cost = cfg->budget_cost_ns;
    if (__sync_fetch_and_add(&b->credit_ns, -cost) < cost) {
        __sync_fetch_and_add(&b->credit_ns, cost);
        return 0;
    }
    return 1;
}

/* RFC 7296 3.1 header. IKE_SA_INIT requests (responder SPI zero, not a response) go
 * through the shield when it is on: their source's bucket, then the global budget.
 * Everything else IKE passes. The clock is jiffies (bpf_jiffies64() is inlined by the
 * verifier into one load; bpf_ktime_get_coarse_ns() cost ~20 ns per packet, more than
 * the rest of the shield): 1-10 ms of resolution, far below any sensible IKE_SA_INIT
 * interval; the loader keeps every burst at least two jiffies of credit. */
static __always_inline int wan_ike(struct dp_config *cfg, struct pkt *p, void *ike_start)
{
    struct ike_header *ike = ike_start;
    if ((void *)(ike + 1) > p->data_end)
        return verdict(R_WAN_IKE_MALFORMED, XDP_DROP);
    if (!(cfg->flags & (CFG_IKE_RATE_LIMIT | CFG_IKE_BUDGET)) ||
        ike->exchange_type != IKE_SA_INIT || (ike->flags & IKE_FLAG_RESPONSE) ||
        *(u64 *)ike->spi_r != 0)
        return verdict(R_WAN_IKE, XDP_PASS);
    u64 now = bpf_jiffies64() * cfg->jiffy_ns;
    if ((cfg->flags & CFG_IKE_RATE_LIMIT) && !source_admits(cfg, p, now))
        return verdict(R_WAN_IKE_RATE_LIMITED, XDP_DROP);
    if ((cfg->flags & CFG_IKE_BUDGET) && !budget_admits(cfg, now))
        return verdict(R_WAN_IKE_OVER_BUDGET, XDP_DROP);
    return verdict(R_WAN_IKE, XDP_PASS);
}

int xdp_wan(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    struct dp_config *cfg = config.lookup(&zero);
    if (!cfg)
        return XDP_PASS;
    struct pkt p = {};
    p.data = data;
    p.data_end = data_end;
    p.pkt_len = data_end - data;

    switch (parse_l3(&p)) {
    case P_OK:
        break;
    case P_NON_IP:
        return verdict(R_WAN_NON_IP, XDP_PASS);
    case P_BAD_L2:
        return verdict(R_WAN_MALFORMED_L2, XDP_DROP);
    case P_FRAGMENT:
        return verdict(R_WAN_FRAGMENT, XDP_PASS);
    case P_TOO_DEEP:
        return verdict(R_WAN_OTHER, XDP_PASS);
    default:
        return verdict(R_WAN_MALFORMED_IP, XDP_DROP);
    }

    void *l4 = pkt_at(&p, p.l4_off);
    if (!l4)
        return verdict(R_WAN_OTHER, XDP_PASS);
    if (p.l4_proto == IPPROTO_ESP) {
        /* RFC 4303 2: SPI and sequence number, then payload. */
        if (l4 + 8 > data_end || p.l4_off + 8 > p.l3_off + p.ip_len)
            return verdict(R_WAN_ESP_MALFORMED, XDP_DROP);
        return wan_esp(ctx, cfg, &p, bpf_ntohl(*(__be32 *)l4));
    }
    if (p.l4_proto != IPPROTO_UDP)
        return verdict(R_WAN_OTHER, XDP_PASS);

    struct udphdr *udp = l4;
    if ((void *)(udp + 1) > data_end)
        return verdict(R_WAN_MALFORMED_IP, XDP_DROP);
    u32 ulen = bpf_ntohs(udp->len);
    /* A first fragment carries the whole datagram's UDP length (large IKE_AUTH messages
     * with certificates are often fragmented): only whole datagrams must agree. */
    if (ulen < sizeof(*udp) || (!p.first_fragment && p.l4_off + ulen > p.l3_off + p.ip_len))
        return verdict(R_WAN_MALFORMED_IP, XDP_DROP);
    void *payload = udp + 1;
    u32 plen = ulen - sizeof(*udp);

    if (udp->dest == bpf_htons(IKE_PORT))
        return wan_ike(cfg, &p, payload);
    if (udp->dest != bpf_htons(NATT_PORT))
        return verdict(R_WAN_OTHER, XDP_PASS);

    /* RFC 3948 2.2/2.3: ESP-in-UDP, non-ESP marker (4 zero octets) before IKE, or a
     * one-octet 0xFF NAT-keepalive. */
    if (plen == 1) {
        u8 *b = payload;
        if ((void *)(b + 1) <= data_end && *b == 0xff)
            return verdict(R_WAN_NATT_KEEPALIVE, XDP_PASS);
        return verdict(R_WAN_ESP_MALFORMED, XDP_DROP);
    }
    if (plen < 8 || payload + 8 > data_end)
        return verdict(R_WAN_ESP_MALFORMED, XDP_DROP);
    u32 marker = *(u32 *)payload;
    if (marker == 0)
        return wan_ike(cfg, &p, payload + 4);
    return wan_esp(ctx, cfg, &p, bpf_ntohl(marker));
}

/* Packets in an skb: a GRO/GSO skb stands for gso_segs of them. Bytes are counted from
 * the (merged) IP header's length, so the merged segments' own headers are not in it. */
static __always_inline u32 skb_packets(struct __sk_buff *skb)
{
    u32 segs = skb->gso_segs;
    return segs > 1 ? segs : 1;
}

static __always_inline void tc_pull(struct __sk_buff *skb)
{
    u32 want = skb->len < PULL_LEN ? skb->len : PULL_LEN;
    if ((u32)(skb->data_end - skb->data) < want)
        bpf_skb_pull_data(skb, want);
}

int tc_wan_egress(struct __sk_buff *skb)
{
    tc_pull(skb);
    struct pkt p = {};
    p.data = (void *)(long)skb->data;
    p.data_end = (void *)(long)skb->data_end;
    p.pkt_len = skb->len;
    p.gso = skb->gso_segs > 1;
    if (parse_l3(&p) != P_OK)
        return tc_verdict(R_OUT_OTHER, XDP_PASS);

    void *l4 = pkt_at(&p, p.l4_off);
    u32 spi = 0;
    if (!l4)
        return tc_verdict(R_OUT_OTHER, XDP_PASS);
    if (p.l4_proto == IPPROTO_ESP) {
        if (l4 + 8 > p.data_end)
            return tc_verdict(R_OUT_OTHER, XDP_PASS);
        spi = bpf_ntohl(*(__be32 *)l4);
    } else if (p.l4_proto == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) + 8 > p.data_end || udp->source != bpf_htons(NATT_PORT))
            return tc_verdict(R_OUT_OTHER, XDP_PASS);
        spi = bpf_ntohl(*(__be32 *)(udp + 1));
        if (spi == 0) /* non-ESP marker: IKE */
            return tc_verdict(R_OUT_OTHER, XDP_PASS);
    } else {
        return tc_verdict(R_OUT_OTHER, XDP_PASS);
    }
    u32 *slot = out_spi.lookup(&spi);
    if (!slot)
        return tc_verdict(R_OUT_ESP_UNKNOWN_SPI, XDP_PASS);
    u32 s = *slot & SLOT_MASK;
    struct slot_stats *st = slot_stats.lookup(&s);
    if (st) {
        st->esp_out_packets += skb_packets(skb);
        st->esp_out_bytes += p.ip_len;
    }
    return tc_verdict(R_OUT_ESP, XDP_PASS);
}

/* Clamp the MSS option (RFC 9293 3.7.1) of a SYN or SYN-ACK down to `clamp`; never
 * raise it. Options are walked within MAX_TCP_OPTIONS bytes; malformed options and an
 * MSS value at an odd offset (its incremental checksum update would straddle 16-bit
 * words) are left alone and counted. */
static __always_inline int lan_clamp(struct __sk_buff *skb, struct pkt *p, u16 clamp, u32 out)
{
    void *data_end = p->data_end;
    struct tcphdr *tcp = pkt_at(p, p->l4_off);
    if (!tcp)
        return tc_verdict(R_LAN_TUNNEL + out, XDP_PASS);
    if ((void *)(tcp + 1) > data_end)
        return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);
    if (!tcp->syn)
        return tc_verdict(R_LAN_TUNNEL + out, XDP_PASS);
    u32 doff = tcp->doff * 4;
    if (doff < sizeof(*tcp))
        return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);
    u32 optlen = doff - sizeof(*tcp);
    u8 *opts = (u8 *)(tcp + 1);
    if ((void *)opts + optlen > data_end)
        return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);

    u32 off = 0;
    /* Verifier-friendly walk: `i` bounds the loop (every option advances off by >= 1, so
     * 40 rounds cover 40 bytes), and off is widened to [0, 63] at the top of each round
     * (opt_index), so every path reaching round i looks alike to the verifier and is
     * pruned there. Without that, Linux 6.1 gives up ("sequence of jumps too complex"). */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_TCP_OPTIONS; i++) {
        off = opt_index(off);
        if (off >= optlen)
            return tc_verdict(R_LAN_MSS_UNCHANGED + out, XDP_PASS); /* no MSS option */
        u8 *o = opts + off;
        if ((void *)(o + 1) > data_end)
            return tc_verdict(R_LAN_MSS_MALFORMED + out, XDP_PASS);
        u8 kind = o[0];
        if (kind == 0) /* end of option list */
            return tc_verdict(R_LAN_MSS_UNCHANGED + out, XDP_PASS);
        if (kind == 1) { /* no-operation */
            off += 1;
            continue;
        }
        if ((void *)(o + 2) > data_end)
            return tc_verdict(R_LAN_MSS_MALFORMED + out, XDP_PASS);
        u8 len = o[1];
        if (len < 2 || off + len > optlen)
            return tc_verdict(R_LAN_MSS_MALFORMED + out, XDP_PASS);
        if (kind == 2)
            break;
        off += len;
    }
    if (off >= optlen) /* every iteration advanced: ran out of options */
        return tc_verdict(R_LAN_MSS_UNCHANGED + out, XDP_PASS);
    /* Here o[0] == 2 (MSS) and off + len <= optlen <= 40. */
    if (off > MAX_TCP_OPTIONS - 4)
        return tc_verdict(R_LAN_MSS_MALFORMED + out, XDP_PASS);
    u8 *mss = opts + opt_index(off);
    if ((void *)(mss + 4) > data_end || mss[1] != 4)
        return tc_verdict(R_LAN_MSS_MALFORMED + out, XDP_PASS);
    if (off & 1)
        return tc_verdict(R_LAN_MSS_ODD_OFFSET + out, XDP_PASS);
    __be16 *value = (__be16 *)(mss + 2);
    __be16 old = *value;
    if (bpf_ntohs(old) <= clamp)
        return tc_verdict(R_LAN_MSS_UNCHANGED + out, XDP_PASS);
    __be16 new = bpf_htons(clamp);
    *value = new;
    bpf_l4_csum_replace(skb, p->l4_off + offsetof(struct tcphdr, check), old, new,
                        sizeof(new));
    return tc_verdict(R_LAN_MSS_CLAMPED + out, XDP_PASS);
}

/* Both LAN directions. Ingress (out = 0): cleartext from the LAN about to enter a
 * tunnel, looked up by destination. Egress (out = LAN_OUT): cleartext that came out of
 * a tunnel on its way to the LAN, looked up by source, so the MSS the remote end offers
 * is clamped too and LAN hosts never send segments the tunnel cannot carry. */
static __always_inline int lan_prog(struct __sk_buff *skb, u32 out)
{
    tc_pull(skb);
    u32 zero = 0;
    struct dp_config *cfg = config.lookup(&zero);
    if (!cfg)
        return TC_ACT_OK;
    struct pkt p = {};
    p.data = (void *)(long)skb->data;
    p.data_end = (void *)(long)skb->data_end;
    p.pkt_len = skb->len;
    p.gso = skb->gso_segs > 1;
    int res = parse_l3(&p);
    if (res == P_NON_IP || res == P_BAD_L2)
        return tc_verdict(R_LAN_NO_TUNNEL + out, XDP_PASS);
    if (res == P_BAD_IP)
        return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);

    struct clamp_key key = {};
    void *l3 = pkt_at(&p, p.l3_off);
    if (!l3)
        return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);
    key.prefixlen = 128;
    if (p.is_v6) {
        struct ipv6hdr *ip6 = l3;
        if ((void *)(ip6 + 1) > p.data_end)
            return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);
        __builtin_memcpy(key.addr, out ? (void *)&ip6->saddr : (void *)&ip6->daddr, 16);
    } else {
        struct iphdr *ip = l3;
        if ((void *)(ip + 1) > p.data_end)
            return tc_verdict(R_LAN_MALFORMED + out, XDP_DROP);
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        __builtin_memcpy(&key.addr[12], out ? (void *)&ip->saddr : (void *)&ip->daddr, 4);
    }
    struct clamp_value *v = clamp_prefixes.lookup(&key);
    if (!v || v->slot == SLOT_NONE) /* no tunnel, or carved out of a wider one */
        return tc_verdict(R_LAN_NO_TUNNEL + out, XDP_PASS);
    u32 slot = v->slot & SLOT_MASK;
    u32 mtu = v->mtu;
    struct slot_stats *st = slot_stats.lookup(&slot);
    if (st) {
        if (out) {
            st->clear_from_tunnel_packets += skb_packets(skb);
            st->clear_from_tunnel_bytes += p.ip_len;
        } else {
            st->clear_to_tunnel_packets += skb_packets(skb);
            st->clear_to_tunnel_bytes += p.ip_len;
        }
    }
    if (res != P_OK || p.l4_proto != IPPROTO_TCP || !(cfg->flags & CFG_MSS_CLAMP))
        return tc_verdict(R_LAN_TUNNEL + out, XDP_PASS);
    /* MSS = MTU - IP header - TCP header (RFC 9293 3.7.1; RFC 8200 for 40-octet IPv6). */
    u32 overhead = p.is_v6 ? 60 : 40;
    if (mtu <= overhead)
        return tc_verdict(R_LAN_TUNNEL + out, XDP_PASS);
    return lan_clamp(skb, &p, (u16)(mtu - overhead), out);
}

int tc_lan_ingress(struct __sk_buff *skb)
{
    return lan_prog(skb, 0);
}

int tc_lan_egress(struct __sk_buff *skb)
{
    return lan_prog(skb, LAN_OUT);
}
