// SPDX-License-Identifier: MIT
/*
 * swiotlb-sampler: read every file under the swiotlb debugfs directory at a
 * fixed rate and write one CSV row per tick.  Runs inside the lab's guests.
 *
 * A C program rather than a shell loop because a fork per sample under TCG
 * costs milliseconds and distorts the very workload being measured; here a
 * tick is an open/read/close per file and no process creation at all.
 * (debugfs attribute files are opened non-seekable, so pread() on a kept
 * descriptor fails with ESPIPE: each sample must reopen the file.)
 *
 * Usage: swiotlb-sampler [-r HZ] [-e EVERY] [-f FAST] [-d DIR] -o OUT
 * The file named FAST (default io_tlb_used, the only counter that moves
 * quickly) is read on every tick; every other file on every EVERY-th tick
 * (default 5), its cell left empty in between.  Under TCG each debugfs
 * open/read/close is costly enough to show in fio's IOPS.
 * Stops cleanly on SIGTERM/SIGINT and then writes "# end samples=N late=N".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES 64

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

struct source {
	char name[512];
	char path[1024];
};

static int add_sources(const char *root, const char *rel, struct source *src, int n)
{
	char path[512];
	struct dirent **names;
	int count, i;

	snprintf(path, sizeof(path), "%s%s%s", root, *rel ? "/" : "", rel);
	count = scandir(path, &names, NULL, alphasort);
	if (count < 0)
		return n;
	for (i = 0; i < count; i++) {
		char child_rel[512], child[1024];
		struct stat st;

		if (names[i]->d_name[0] == '.')
			goto next;
		snprintf(child_rel, sizeof(child_rel), "%s%s%s", rel, *rel ? "/" : "",
			 names[i]->d_name);
		snprintf(child, sizeof(child), "%s/%s", root, child_rel);
		if (stat(child, &st) != 0)
			goto next;
		if (S_ISDIR(st.st_mode) && !*rel) {
			n = add_sources(root, child_rel, src, n);
		} else if (S_ISREG(st.st_mode) && n < MAX_FILES) {
			int fd = open(child, O_RDONLY | O_CLOEXEC);

			if (fd >= 0) {
				close(fd);
				snprintf(src[n].name, sizeof(src[n].name), "%s", child_rel);
				snprintf(src[n].path, sizeof(src[n].path), "%s", child);
				n++;
			}
		}
next:
		free(names[i]);
	}
	free(names);
	return n;
}

static long long now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	const char *root = "/sys/kernel/debug/swiotlb", *out_path = NULL, *fast = "io_tlb_used";
	long long every = 5;
	struct source src[MAX_FILES];
	long long period_ns, next, samples = 0, late = 0;
	double hz = 50.0;
	struct timespec ts;
	FILE *out;
	int opt, n, i;

	while ((opt = getopt(argc, argv, "r:e:f:d:o:")) != -1) {
		switch (opt) {
		case 'e':
			every = atoll(optarg);
			break;
		case 'f':
			fast = optarg;
			break;
		case 'r':
			hz = atof(optarg);
			break;
		case 'd':
			root = optarg;
			break;
		case 'o':
			out_path = optarg;
			break;
		default:
			fprintf(stderr, "usage: %s [-r HZ] [-d DIR] -o OUT\n", argv[0]);
			return 2;
		}
	}
	if (!out_path || hz <= 0 || hz > 10000 || every < 1) {
		fprintf(stderr, "usage: %s [-r HZ (0-10000]] [-d DIR] -o OUT\n", argv[0]);
		return 2;
	}
	n = add_sources(root, "", src, 0);
	if (n == 0) {
		fprintf(stderr, "%s: no readable files under %s\n", argv[0], root);
		return 1;
	}
	out = fopen(out_path, "w");
	if (!out) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], out_path, strerror(errno));
		return 1;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);

	period_ns = (long long)(1e9 / hz);
	fprintf(out, "# swiotlb-sampler v1 hz=%g every=%lld fast=%s root=%s start_monotonic_ns=%lld start_realtime_ns=%lld\n",
		hz, every, fast, root, now_ns(CLOCK_MONOTONIC), now_ns(CLOCK_REALTIME));
	fprintf(out, "t_ns");
	for (i = 0; i < n; i++)
		fprintf(out, ",%s", src[i].name);
	fputc('\n', out);

	next = now_ns(CLOCK_MONOTONIC);
	while (!stop) {
		fprintf(out, "%lld", now_ns(CLOCK_MONOTONIC));
		for (i = 0; i < n; i++) {
			char buf[64];
			int fd;
			ssize_t len;

			if (samples % every && strcmp(src[i].name, fast)) {
				fputc(',', out);
				continue;
			}
			fd = open(src[i].path, O_RDONLY | O_CLOEXEC);
			len = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

			if (fd >= 0)
				close(fd);
			if (len > 0 && buf[len - 1] == '\n')
				len--;
			buf[len > 0 ? len : 0] = '\0';
			fprintf(out, ",%s", buf);
		}
		fputc('\n', out);
		samples++;

		next += period_ns;
		if (now_ns(CLOCK_MONOTONIC) > next) {
			/* Missed a tick: count it and re-anchor rather than burst. */
			late++;
			next = now_ns(CLOCK_MONOTONIC);
			continue;
		}
		ts.tv_sec = next / 1000000000LL;
		ts.tv_nsec = next % 1000000000LL;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !stop)
			;
	}
	fprintf(out, "# end samples=%lld late=%lld\n", samples, late);
	return fclose(out) == 0 ? 0 : 1;
}
