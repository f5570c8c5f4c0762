/* nfqdelay: a minimal netem stand-in for kernels without sch_netem.
 *
 * Packets sent to NFQUEUE <queue> are held for <delay_ms> and then accepted, in arrival
 * order; each one is dropped instead with probability <loss_pct>/100 (decided on
 * arrival). Only packet metadata crosses to user space (NFQNL_COPY_META), so the cost is
 * one verdict syscall per packet. Build: gcc -O2 -o nfqdelay nfqdelay.c -lnetfilter_queue -lnfnetlink
 * Usage: nfqdelay QUEUE DELAY_MS LOSS_PCT [SEED]
 * Use with: iptables -t raw -A PREROUTING -i LAN_IF -j NFQUEUE --queue-num Q --queue-bypass
 * (tests/netlab/lab.py: Lab.impair)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RING (1 << 17)
static uint32_t ids[RING];
static double due[RING];
static unsigned head, tail;
static double delay_s, loss;
static struct nfq_q_handle *qh;
static unsigned long n_in, n_drop, n_full;
static volatile sig_atomic_t stop;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cb(struct nfq_q_handle *q, struct nfgenmsg *m, struct nfq_data *nfa, void *data) {
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    uint32_t id = ntohl(ph->packet_id);
    n_in++;
    if (loss > 0 && drand48() < loss) {
        n_drop++;
        return nfq_set_verdict(q, id, NF_DROP, 0, NULL);
    }
    if (head - tail >= RING) { /* delay line full: drop (a full router queue) */
        n_full++;
        return nfq_set_verdict(q, id, NF_DROP, 0, NULL);
    }
    ids[head % RING] = id;
    due[head % RING] = now() + delay_s;
    head++;
    return 0;
}

static void on_sig(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s QUEUE DELAY_MS LOSS_PCT [SEED]\n", argv[0]);
        return 2;
    }
    int qnum = atoi(argv[1]);
    delay_s = atof(argv[2]) / 1000.0;
    loss = atof(argv[3]) / 100.0;
    srand48(argc > 4 ? atol(argv[4]) : 1);
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    struct nfq_handle *h = nfq_open();
    if (!h) { perror("nfq_open"); return 1; }
    qh = nfq_create_queue(h, qnum, &cb, NULL);
    if (!qh) { perror("nfq_create_queue"); return 1; }
    if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) { perror("nfq_set_mode"); return 1; }
    nfq_set_queue_maxlen(qh, RING);
    nfnl_rcvbufsiz(nfq_nfnlh(h), 64 * 1024 * 1024);
    int fd = nfq_fd(h);
    char buf[65536] __attribute__((aligned));
    fprintf(stderr, "nfqdelay: queue %d, delay %.1f ms, loss %.2f%%\n", qnum, delay_s * 1000, loss * 100);
    while (!stop) {
        int timeout = 100;
        if (head != tail) {
            double wait = due[tail % RING] - now();
            timeout = wait <= 0 ? 0 : (int)(wait * 1000) + 1;
            if (timeout > 100) timeout = 100;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout);
        if (r > 0 && (p.revents & POLLIN)) {
            for (int k = 0; k < 64; k++) {
                int n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (n < 0) {
                    if (errno == ENOBUFS) { fprintf(stderr, "nfqdelay: ENOBUFS (kernel dropped)\n"); continue; }
                    break;
                }
                nfq_handle_packet(h, buf, n);
            }
        }
        double t = now();
        while (head != tail && due[tail % RING] <= t) {
            nfq_set_verdict(qh, ids[tail % RING], NF_ACCEPT, 0, NULL);
            tail++;
        }
    }
    /* release what is still held */
    while (head != tail) { nfq_set_verdict(qh, ids[tail % RING], NF_ACCEPT, 0, NULL); tail++; }
    fprintf(stderr, "nfqdelay: %lu packets, %lu dropped (loss), %lu dropped (full)\n", n_in, n_drop, n_full);
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}
