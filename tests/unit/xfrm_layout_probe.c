/* Prints sizes, member offsets and constants of <linux/xfrm.h> as "name value" lines,
 * for tests/unit/test_xfrm_layout.py to compare with gateway/xfrm/netlink.py. */
#include <stddef.h>
#include <stdio.h>
#include <linux/xfrm.h>

#define SIZE(s) printf("sizeof.%s %zu\n", #s, sizeof(struct s))
#define OFF(s, m) printf("offset.%s.%s %zu\n", #s, #m, offsetof(struct s, m))
#define CONST(c) printf("const.%s %ld\n", #c, (long)(c))

int main(void)
{
	SIZE(xfrm_id);
	SIZE(xfrm_selector);
	SIZE(xfrm_lifetime_cfg);
	SIZE(xfrm_lifetime_cur);
	SIZE(xfrm_replay_state);
	SIZE(xfrm_replay_state_esn);
	SIZE(xfrm_algo);
	SIZE(xfrm_algo_auth);
	SIZE(xfrm_algo_aead);
	SIZE(xfrm_usersa_info);
	SIZE(xfrm_usersa_id);
	SIZE(xfrm_aevent_id);
	SIZE(xfrm_userpolicy_info);
	SIZE(xfrm_userpolicy_id);
	SIZE(xfrm_user_tmpl);
	SIZE(xfrm_encap_tmpl);
	SIZE(xfrm_user_acquire);
	SIZE(xfrm_user_expire);
	SIZE(xfrm_user_polexpire);
	SIZE(xfrm_user_migrate);
	SIZE(xfrm_user_kmaddress);
	SIZE(xfrm_userpolicy_type);
	SIZE(xfrm_mark);
	SIZE(xfrm_user_offload);

	OFF(xfrm_selector, dport);
	OFF(xfrm_selector, family);
	OFF(xfrm_selector, prefixlen_d);
	OFF(xfrm_selector, proto);
	OFF(xfrm_selector, ifindex);
	OFF(xfrm_selector, user);
	OFF(xfrm_usersa_info, id.daddr);
	OFF(xfrm_usersa_info, id.spi);
	OFF(xfrm_usersa_info, id.proto);
	OFF(xfrm_usersa_info, saddr);
	OFF(xfrm_usersa_info, lft.soft_byte_limit);
	OFF(xfrm_usersa_info, curlft.bytes);
	OFF(xfrm_usersa_info, stats.replay);
	OFF(xfrm_usersa_info, seq);
	OFF(xfrm_usersa_info, reqid);
	OFF(xfrm_usersa_info, family);
	OFF(xfrm_usersa_info, mode);
	OFF(xfrm_usersa_info, replay_window);
	OFF(xfrm_usersa_info, flags);
	OFF(xfrm_usersa_id, spi);
	OFF(xfrm_usersa_id, family);
	OFF(xfrm_usersa_id, proto);
	OFF(xfrm_aevent_id, saddr);
	OFF(xfrm_aevent_id, flags);
	OFF(xfrm_aevent_id, reqid);
	OFF(xfrm_userpolicy_info, lft.soft_byte_limit);
	OFF(xfrm_userpolicy_info, curlft.bytes);
	OFF(xfrm_userpolicy_info, priority);
	OFF(xfrm_userpolicy_info, index);
	OFF(xfrm_userpolicy_info, dir);
	OFF(xfrm_userpolicy_info, action);
	OFF(xfrm_userpolicy_info, share);
	OFF(xfrm_userpolicy_id, index);
	OFF(xfrm_userpolicy_id, dir);
	OFF(xfrm_user_tmpl, family);
	OFF(xfrm_user_tmpl, saddr);
	OFF(xfrm_user_tmpl, reqid);
	OFF(xfrm_user_tmpl, mode);
	OFF(xfrm_user_tmpl, optional);
	OFF(xfrm_user_tmpl, aalgos);
	OFF(xfrm_user_tmpl, calgos);
	OFF(xfrm_encap_tmpl, encap_sport);
	OFF(xfrm_encap_tmpl, encap_dport);
	OFF(xfrm_encap_tmpl, encap_oa);
	OFF(xfrm_user_acquire, saddr);
	OFF(xfrm_user_acquire, sel.family);
	OFF(xfrm_user_acquire, policy.index);
	OFF(xfrm_user_acquire, policy.dir);
	OFF(xfrm_user_acquire, aalgos);
	OFF(xfrm_user_acquire, seq);
	OFF(xfrm_user_expire, hard);
	OFF(xfrm_user_polexpire, hard);
	OFF(xfrm_user_migrate, proto);
	OFF(xfrm_user_migrate, reqid);
	OFF(xfrm_user_migrate, new_family);
	OFF(xfrm_replay_state_esn, replay_window);
	OFF(xfrm_algo_aead, alg_key_len);
	OFF(xfrm_algo_aead, alg_icv_len);
	OFF(xfrm_algo_auth, alg_trunc_len);
	OFF(xfrm_user_offload, flags);
	OFF(xfrm_userpolicy_type, reserved1);
	OFF(xfrm_userpolicy_type, reserved2);

	CONST(XFRM_MSG_NEWSA);
	CONST(XFRM_MSG_DELSA);
	CONST(XFRM_MSG_GETSA);
	CONST(XFRM_MSG_NEWPOLICY);
	CONST(XFRM_MSG_DELPOLICY);
	CONST(XFRM_MSG_GETPOLICY);
	CONST(XFRM_MSG_ACQUIRE);
	CONST(XFRM_MSG_EXPIRE);
	CONST(XFRM_MSG_UPDPOLICY);
	CONST(XFRM_MSG_UPDSA);
	CONST(XFRM_MSG_POLEXPIRE);
	CONST(XFRM_MSG_FLUSHSA);
	CONST(XFRM_MSG_NEWAE);
	CONST(XFRM_MSG_GETAE);
	CONST(XFRM_MSG_MIGRATE);
	CONST(XFRMA_ALG_AUTH);
	CONST(XFRMA_ALG_CRYPT);
	CONST(XFRMA_ENCAP);
	CONST(XFRMA_TMPL);
	CONST(XFRMA_LTIME_VAL);
	CONST(XFRMA_REPLAY_VAL);
	CONST(XFRMA_SRCADDR);
	CONST(XFRMA_MIGRATE);
	CONST(XFRMA_ALG_AEAD);
	CONST(XFRMA_KMADDRESS);
	CONST(XFRMA_ALG_AUTH_TRUNC);
	CONST(XFRMA_MARK);
	CONST(XFRMA_REPLAY_ESN_VAL);
	CONST(XFRMA_OFFLOAD_DEV);
	CONST(XFRMA_SET_MARK);
	CONST(XFRMA_IF_ID);
	CONST(XFRMA_MTIMER_THRESH);
	CONST(XFRMNLGRP_ACQUIRE);
	CONST(XFRMNLGRP_EXPIRE);
	CONST(XFRMNLGRP_MIGRATE);
	CONST(XFRM_STATE_ESN);
	CONST(XFRM_OFFLOAD_INBOUND);
	CONST(XFRM_OFFLOAD_PACKET);
	CONST(XFRM_MODE_TUNNEL);
	CONST(XFRM_POLICY_FWD);
	return 0;
}
