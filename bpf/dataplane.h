/* Shared ABI of the data-plane programs: map key/value structs, reason codes, config.
 *
 * bpf/abi.py mirrors every struct and enum here with ctypes; tests/unit/test_bpf_abi.py
 * parses this file and fails when the two drift apart. Change both together.
 */
#ifndef GATEWAY_DATAPLANE_H
#define GATEWAY_DATAPLANE_H

/* Sizes can be overridden with -D by the loader (bpf/loader.py map_sizes() derives
 * them from the slot bits: outbound SPIs and clamp prefixes grow with the slots). */
#ifndef SLOT_BITS
#define SLOT_BITS 16
#endif
#define MAX_SLOTS (1u << SLOT_BITS)
#define SLOT_MASK (MAX_SLOTS - 1u)

#ifndef MAX_OUT_SPIS
#define MAX_OUT_SPIS 131072
#endif
#ifndef MAX_IN_SPI_FALLBACK
#define MAX_IN_SPI_FALLBACK 16384
#endif
#ifndef MAX_CLAMP_PREFIXES
#define MAX_CLAMP_PREFIXES 131072
#endif
#define IKE_BUCKETS 65536 /* per-source IKE_SA_INIT buckets, indexed by a keyed hash */
#define MAX_STEER_CPUS 64
#define STEER_NONE 0xffffffffu /* slot_entry.cpu: not steered */

/* What each program decided, one code per packet (the packet's final reason). The
 * verdict map is indexed by reason * VERDICT_ACTIONS + action (XDP action numbers;
 * the TC programs record TC_ACT_OK as XDP_PASS and TC_ACT_SHOT as XDP_DROP). */
enum dp_reason {
    /* WAN ingress (XDP) */
    R_WAN_NON_IP = 1,          /* not IPv4/IPv6 (ARP, LLDP...): pass */
    R_WAN_MALFORMED_L2 = 2,    /* truncated Ethernet/VLAN header: drop */
    R_WAN_MALFORMED_IP = 3,    /* truncated/inconsistent IPv4/IPv6/extension header: drop */
    R_WAN_FRAGMENT = 4,        /* non-first fragment, transport header not visible: pass */
    R_WAN_OTHER = 5,           /* any other protocol or port, or too many ext headers: pass */
    R_WAN_ESP = 6,             /* ESP (or ESP-in-UDP) for an SPI we own: pass or redirect */
    R_WAN_ESP_UNKNOWN_SPI = 7, /* ESP for an SPI we do not own: pass, or drop if configured */
    R_WAN_ESP_MALFORMED = 8,   /* ESP/UDP header truncated or lengths inconsistent: drop */
    R_WAN_NATT_KEEPALIVE = 9,  /* RFC 3948 2.3 one-octet 0xFF on port 4500: pass */
    R_WAN_IKE = 10,            /* IKE on 500, or on 4500 after the non-ESP marker: pass */
    R_WAN_IKE_RATE_LIMITED = 11, /* IKE_SA_INIT request over the per-source budget: drop */
    R_WAN_IKE_MALFORMED = 12,  /* shorter than the IKE header (RFC 7296 3.1): drop */
    /* WAN egress (TC) */
    R_OUT_ESP = 13,            /* outbound ESP for an SPI the daemon registered: pass */
    R_OUT_ESP_UNKNOWN_SPI = 14,/* outbound ESP with an SPI not registered: pass */
    R_OUT_OTHER = 15,          /* everything else leaving the WAN: pass */
    /* LAN ingress (TC), cleartext about to enter a tunnel */
    R_LAN_NO_TUNNEL = 16,      /* destination matches no tunnel prefix (or not IP): pass */
    R_LAN_TUNNEL = 17,         /* destination in a tunnel prefix, counted per slot: pass */
    R_LAN_MSS_CLAMPED = 18,    /* SYN/SYN-ACK whose MSS was lowered: pass */
    R_LAN_MSS_UNCHANGED = 19,  /* SYN/SYN-ACK already at or below the clamp, or no MSS: pass */
    R_LAN_MSS_MALFORMED = 20,  /* TCP options malformed: left alone, pass */
    R_LAN_MSS_ODD_OFFSET = 21, /* MSS value at an odd offset: left alone, pass */
    R_LAN_MALFORMED = 22,      /* truncated/inconsistent IP or TCP header: drop */
    /* LAN egress (TC), cleartext out of a tunnel to the LAN: the same reasons in the same
     * order, looked up by source address. Each is its ingress cousin + LAN_OUT. */
    R_LAN_OUT_NO_TUNNEL = 23,
    R_LAN_OUT_TUNNEL = 24,
    R_LAN_OUT_MSS_CLAMPED = 25,
    R_LAN_OUT_MSS_UNCHANGED = 26,
    R_LAN_OUT_MSS_MALFORMED = 27,
    R_LAN_OUT_MSS_ODD_OFFSET = 28,
    R_LAN_OUT_MALFORMED = 29,
    /* WAN ingress (XDP), continued */
    R_WAN_IKE_OVER_BUDGET = 30, /* IKE_SA_INIT request over the global budget: drop */
    R_MAX = 31,
};

#define LAN_OUT (R_LAN_OUT_NO_TUNNEL - R_LAN_NO_TUNNEL)

#define VERDICT_ACTIONS 8

/* Per-slot counters: one per-CPU array entry per Child SA slot. Each program writes
 * its own pair of fields. Bytes are IP bytes (outer IP header included, link layer
 * excluded) as given by the IP header's length field. The TC programs count a GSO/GRO
 * skb as gso_segs packets. */
struct slot_stats {
    __u64 esp_in_packets;            /* xdp_wan */
    __u64 esp_in_bytes;
    __u64 esp_out_packets;           /* tc_wan_egress */
    __u64 esp_out_bytes;
    __u64 clear_to_tunnel_packets;   /* tc_lan_ingress */
    __u64 clear_to_tunnel_bytes;
    __u64 clear_from_tunnel_packets; /* tc_lan_egress */
    __u64 clear_from_tunnel_bytes;
};

#define SLOT_F_OFFLOADED 1u /* the NIC decrypts this SA: never steer (metadata would be lost) */

/* Inbound SPIs of a slot: during a rekey the old and the new Child SA share the slot,
 * so two SPIs (host byte order; 0 = unused). Each one's low SLOT_BITS equal the slot.
 * `cpu`: where steering sends the slot's ESP (the loader spreads slots over the steering
 * CPU set, least loaded first, or pins one); STEER_NONE: not steered. Per slot, not per
 * SPI, so the old and the new SA of a rekey are decrypted on the same CPU. */
struct slot_entry {
    __u32 spi[2];
    __u32 flags;
    __u32 cpu;
};

/* LPM key for the MSS clamp: IPv4 is stored as ::ffff:a.b.c.d with prefixlen + 96. */
struct clamp_key {
    __u32 prefixlen;
    __u8 addr[16];
};

#define SLOT_NONE 0xffffffffu /* clamp_value.slot: prefix excluded from every tunnel */

struct clamp_value {
    __u32 slot;
    __u16 mtu;  /* tunnel MTU for this prefix; 0 = count only, never clamp */
    __u16 pad;
};

/* IKE_SA_INIT shield, per source: a token bucket in nanoseconds of credit (every
 * request costs ike_cost_ns, credit accrues with time, capped at ike_burst_ns), in an
 * array indexed by a keyed hash of the source (IPv4 address, IPv6 /64): no hash-map
 * lookup and nothing a spoofed flood can evict. Sources that collide share a bucket;
 * updates from two CPUs on one bucket race: approximate by design (cheap, no locks). */
struct ike_bucket {
    __u64 credit_ns;
    __u64 last_ns;
};

/* IKE_SA_INIT shield, global: one bucket for every source together, so a flood from
 * random (spoofed) sources is bounded too. Updated with atomic operations: the refill
 * is claimed by compare-and-swap of last_ns, charges are fetch-and-add (a refused
 * charge is given back), so concurrent CPUs cannot pass more than the budget. */
struct ike_budget {
    __s64 credit_ns;
    __u64 last_ns;
};

#define CFG_DROP_UNKNOWN_SPI 1u
#define CFG_IKE_RATE_LIMIT 2u
#define CFG_STEER 4u
#define CFG_NIC_DECRYPTS 8u /* the WAN NIC has ESP offload on: never steer anything */
#define CFG_MSS_CLAMP 16u
#define CFG_IN_FALLBACK 32u /* in_spi_fallback has entries: look SPIs up there too */

#define CFG_IKE_BUDGET 64   /* the global IKE_SA_INIT budget is on */

struct dp_config {
    __u32 flags;
    __u32 hash_seed;       /* key of the per-source bucket hash (random per start) */
    __u64 ike_cost_ns;     /* per source: ns of credit one IKE_SA_INIT costs */
    __u64 ike_burst_ns;    /* per source: credit cap */
    __u64 budget_cost_ns;  /* global budget: the same */
    __u64 budget_burst_ns;
    __u64 jiffy_ns;        /* ns per jiffy (1e9 / CONFIG_HZ): the shield's clock */
};

#endif
