/* Test probe (tests/host/test_bpf_scale_shield_steering.py): a TC ingress program that
 * counts IPv4 ESP packets per CPU. TC ingress runs after XDP, on the CPU that processes
 * the packet in the stack: for ESP that xdp_wan redirected through the cpumap, the
 * cpumap's target CPU. Always passes the packet on. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

BPF_PERCPU_ARRAY(seen, u64, 1);

int tc_esp_cpu(struct __sk_buff *skb)
{
    u8 proto = 0;
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) < 0 || proto != IPPROTO_ESP)
        return TC_ACT_OK;
    u32 zero = 0;
    u64 *n = seen.lookup(&zero);
    if (n)
        *n += 1;
    return TC_ACT_OK;
}
