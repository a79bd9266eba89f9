// scripts/bench, programs section: what a connect costs through programs mode's hooks.
//
// usage: connloop udp|tcp N ROUNDS BASE_CGROUP SESSION_CGROUP
//
// Runs ROUNDS rounds of three loops of N socket+connect+close each, and prints the median ns of
// one iteration for each: "none" (in BASE_CGROUP: no hook), "listed" (in SESSION_CGROUP, under
// its own name, which the session lists) and "unlisted" (in SESSION_CGROUP, renamed with
// PR_SET_NAME). The process moves itself between the cgroups, so the three alternate within one
// process and drift in the machine's load hits them alike. UDP needs no peer; TCP connects to an
// in-process listener on 127.0.0.1 (made in BASE_CGROUP, so a session's preferred-loopback
// lookup finds nothing and the connect goes to it) and accepts each connection; linger 0 keeps
// TIME_WAIT from eating the ephemeral ports.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static void join(const char *cgroup)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	FILE *f = fopen(path, "w");
	if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f))
		perror(path), exit(1);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if (argc != 6)
		return fprintf(stderr, "usage: connloop udp|tcp N ROUNDS BASE_CGROUP SESSION_CGROUP\n"), 2;
	int tcp = strcmp(argv[1], "tcp") == 0;
	long n = atol(argv[2]);
	int rounds = atoi(argv[3]);
	char listed[16] = {0};
	prctl(PR_GET_NAME, listed);
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int l = -1;
	join(argv[4]);
	if (tcp) {
		l = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = to;
		a.sin_port = 0;
		socklen_t len = sizeof(a);
		if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 128) || getsockname(l, (struct sockaddr *)&a, &len))
			return perror("listen"), 1;
		to.sin_port = a.sin_port;
	}
	double *per[3];
	for (int v = 0; v < 3; v++)
		per[v] = calloc(rounds, sizeof(double));
	struct linger lg = {1, 0};
	for (int r = 0; r < rounds; r++) {
		for (int v = 0; v < 3; v++) {
			join(v == 0 ? argv[4] : argv[5]);
			prctl(PR_SET_NAME, v == 2 ? "connother" : listed);
			double t0 = now_ns();
			for (long i = 0; i < n; i++) {
				int s = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
				if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof(to)))
					return perror("connect"), 1;
				if (tcp) {
					int a = accept(l, NULL, NULL);
					if (a < 0)
						return perror("accept"), 1;
					setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
					close(a);
				}
				close(s);
			}
			per[v][r] = (now_ns() - t0) / n;
		}
	}
	join(argv[4]);
	for (int v = 0; v < 3; v++) {
		qsort(per[v], rounds, sizeof(double), cmp);
		printf("%.1f%c", per[v][rounds / 2], v == 2 ? '\n' : ' ');
	}
	return 0;
}
