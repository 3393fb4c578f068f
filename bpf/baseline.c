/* Minimal programs the benchmark compares against: the cost of running any program. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

int xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

int tc_ok(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}
