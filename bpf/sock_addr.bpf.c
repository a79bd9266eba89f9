// SPDX-License-Identifier: GPL-2.0
// sessiond programs mode: cgroup sock_addr hooks that give the listed programs of one login
// session its loopback 127.0.0.(sid+1) and its own address, on the host's own network stack.
// One copy of this object is loaded per session (its maps are that session's); the daemon
// (src/programs/hooks.rs) fills `config` and `programs` before it attaches the programs to the
// session's cgroup. Addresses and ports are in network byte order, as the kernel hands them.
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define LOCALHOST bpf_htonl(0x7f000001)  /* 127.0.0.1 */
#define LOOPNET_MASK bpf_htonl(0xff000000)
#define LOOPNET bpf_htonl(0x7f000000)    /* 127/8 */
#define TCP_LISTEN 10
/* From the socket headers, which do not build for the bpf target. */
#define AF_INET 2
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

/* config.flags */
#define VIRT_LOOPBACK 1u
#define VIRT_ADDRESS 2u
#define ALL_PROGRAMS 4u  /* the list is empty: every program of the session is listed */

struct config {
	__u32 loopback;   /* 127.0.0.(sid+1) */
	__u32 address;    /* the session's own address; 0 while it has none */
	__u32 flags;
};

/* Counters that `status` shows: how many socket addresses each hook rewrote. */
enum counter { C_BIND, C_CONNECT_LOOPBACK, C_CONNECT_ADDRESS, C_SENDMSG, C_RECVMSG, C_NAME, C_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* Listed process names (the kernel's comm: 15 bytes and a NUL, zero-padded). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[16]);
	__type(value, __u8);
} programs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &which);
	if (n)
		*n += 1;
}

/* The session's config when the calling process is one of its listed programs, else NULL. */
static __always_inline struct config *listed(void)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	if (cfg->flags & ALL_PROGRAMS)
		return cfg;
	char comm[16] = {};
	if (bpf_get_current_comm(comm, sizeof(comm)))
		return 0;
	return bpf_map_lookup_elem(&programs, comm) ? cfg : 0;
}

static __always_inline int is_loopback_net(__u32 ip)
{
	return (ip & LOOPNET_MASK) == LOOPNET;
}

/* Whether the session has a socket of this type bound to its loopback at `port`: a TCP
 * listener, or a bound UDP socket (preferred loopback). */
static __always_inline int session_listens(struct bpf_sock_addr *ctx, __u32 loopback, __u32 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	t.ipv4.saddr = LOCALHOST;
	t.ipv4.daddr = loopback;
	t.ipv4.sport = 0;
	t.ipv4.dport = (__u16)port;
	if (ctx->type == SOCK_STREAM)
		sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else if (ctx->type == SOCK_DGRAM)
		sk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		return 0;
	if (!sk)
		return 0;
	/* A wildcard (0.0.0.0) socket would match too; only the session's own counts. */
	int own = sk->src_ip4 == loopback;
	bpf_sk_release(sk);
	return own;
}

/* Preferred loopback, for connect and sendmsg: a listed program's 127.0.0.1:P goes to its own
 * session's socket at 127.0.0.(sid+1):P when there is one, else stays the host's. Returns
 * whether the destination was 127.0.0.1 under loopback virtualization (nothing else to do). */
static __always_inline int prefer_own_loopback(struct bpf_sock_addr *ctx, struct config *cfg, __u32 counter)
{
	if (!(cfg->flags & VIRT_LOOPBACK) || ctx->user_ip4 != LOCALHOST)
		return 0;
	if (session_listens(ctx, cfg->loopback, ctx->user_port)) {
		ctx->user_ip4 = cfg->loopback;
		count(counter);
	}
	return 1;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = listed();
	if (!cfg)
		return 1;
	if ((cfg->flags & VIRT_LOOPBACK) && ctx->user_ip4 == LOCALHOST) {
		ctx->user_ip4 = cfg->loopback;
		count(C_BIND);
	} else if ((cfg->flags & VIRT_ADDRESS) && cfg->address && ctx->user_ip4 == 0) {
		ctx->user_ip4 = cfg->address;
		count(C_BIND);
	}
	return 1;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = listed();
	if (!cfg)
		return 1;
	if (prefer_own_loopback(ctx, cfg, C_CONNECT_LOOPBACK))
		return 1;
	__u32 dst = ctx->user_ip4;
	if ((cfg->flags & VIRT_ADDRESS) && cfg->address && !is_loopback_net(dst) && dst != 0) {
		struct sockaddr_in src = {};
		src.sin_family = AF_INET;
		src.sin_addr.s_addr = cfg->address;
		/* Fails (and changes nothing) on a socket the program bound itself: that is its
		 * choice. */
		if (bpf_bind(ctx, (struct sockaddr *)&src, sizeof(src)) == 0)
			count(C_CONNECT_ADDRESS);
	}
	return 1;
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = listed();
	if (!cfg)
		return 1;
	if (prefer_own_loopback(ctx, cfg, C_SENDMSG))
		return 1;
	__u32 dst = ctx->user_ip4;
	if ((cfg->flags & VIRT_ADDRESS) && cfg->address && !is_loopback_net(dst) && ctx->msg_src_ip4 == 0) {
		ctx->msg_src_ip4 = cfg->address;
		count(C_SENDMSG);
	}
	return 1;
}

/* A reply from the session's loopback reads as coming from 127.0.0.1, the address the
 * program sent to. */
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = listed();
	if (cfg && (cfg->flags & VIRT_LOOPBACK) && ctx->user_ip4 == cfg->loopback) {
		ctx->user_ip4 = LOCALHOST;
		count(C_RECVMSG);
	}
	return 1;
}

/* getsockname: the program sees the address it asked for. */
SEC("cgroup/getsockname4")
int getsockname4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = listed();
	if (!cfg)
		return 1;
	if ((cfg->flags & VIRT_LOOPBACK) && ctx->user_ip4 == cfg->loopback) {
		ctx->user_ip4 = LOCALHOST;
		count(C_NAME);
	} else if ((cfg->flags & VIRT_ADDRESS) && cfg->address && ctx->user_ip4 == cfg->address) {
		/* Only a listener was bound to 0.0.0.0 by the program; a connected socket's
		 * source is the session address for real. */
		struct bpf_sock *sk = ctx->sk;
		if (sk && sk->state == TCP_LISTEN) {
			ctx->user_ip4 = 0;
			count(C_NAME);
		}
	}
	return 1;
}

/* getpeername: a connection that preferred loopback sent to the session's loopback reads as
 * connected to 127.0.0.1. */
SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = listed();
	if (cfg && (cfg->flags & VIRT_LOOPBACK) && ctx->user_ip4 == cfg->loopback) {
		ctx->user_ip4 = LOCALHOST;
		count(C_NAME);
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
