/*
 * tvm-unify instruction counter: a qemu TCG plugin counting executed guest instructions between two
 * marker syscalls, so a measured call gets an exact count, free of interpreter start-up noise.
 *
 * The guest issues syscall(TVU_MARKER_NR, 1, lo, hi) before the measured call and
 * syscall(TVU_MARKER_NR, 2) after it (an unknown syscall number: qemu answers ENOSYS and the plugin
 * sees it first). At the second marker the plugin writes two decimal numbers to "<out>/<pid>.count"
 * (plugin argument out=DIR), which the guest reads back:
 *   - instructions executed in [lo, hi), the compiled model's code: exact across runs;
 *   - all instructions executed in between (runtime, allocator, interpreter): drifts slightly with
 *     the allocator's state, so it is reported only as context.
 * and "<out>/<pid>.blocks": one line "ADDRESS COUNT" (hex, decimal) per translation block executed in
 * [lo, hi), so the host can attribute the model's instructions to its functions (symbols).
 * Only the guest thread (vCPU) that issued the start marker is counted, per executed translation
 * block, so other server threads never disturb the figure (the device runs kernels on one thread).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define TVU_MARKER_NR 0x7475
#define TVU_MARK_START 1
#define TVU_MARK_STOP 2

struct tb_info {
    uint64_t vaddr;
    uint64_t n_insns;
};

static uint64_t in_range;
static uint64_t total;
static uint64_t range_lo, range_hi;
static int counting;
static unsigned int counted_vcpu;
static char out_dir[4096] = "/tmp";

/* Instructions per block start address inside [lo, hi): open addressing, linear probing. */
#define HIST_SIZE (1 << 16)
static struct { uint64_t vaddr, n; } hist[HIST_SIZE];

static void hist_add(uint64_t vaddr, uint64_t n)
{
    for (uint64_t i = (vaddr >> 2) & (HIST_SIZE - 1);; i = (i + 1) & (HIST_SIZE - 1)) {
        if (hist[i].n == 0 || hist[i].vaddr == vaddr) {
            hist[i].vaddr = vaddr;
            hist[i].n += n;
            return;
        }
    }
}

static void on_tb_exec(unsigned int vcpu, void *udata)
{
    const struct tb_info *tb = udata;
    if (counting && vcpu == counted_vcpu) {
        total += tb->n_insns;
        if (tb->vaddr >= range_lo && tb->vaddr < range_hi) {
            in_range += tb->n_insns;
            hist_add(tb->vaddr, tb->n_insns);
        }
    }
}

static void on_tb_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    /* One small record per translation, alive as long as qemu may run the block. */
    struct tb_info *info = malloc(sizeof(*info));
    info->vaddr = qemu_plugin_tb_vaddr(tb);
    info->n_insns = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS, info);
}

static void write_counts(void)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%d.count", out_dir, (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%" PRIu64 " %" PRIu64 "\n", in_range, total);
        fclose(f);
    }
    snprintf(path, sizeof(path), "%s/%d.blocks", out_dir, (int)getpid());
    f = fopen(path, "w");
    if (f) {
        for (int i = 0; i < HIST_SIZE; i++) {
            if (hist[i].n) {
                fprintf(f, "%" PRIx64 " %" PRIu64 "\n", hist[i].vaddr, hist[i].n);
            }
        }
        fclose(f);
    }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num != TVU_MARKER_NR) {
        return;
    }
    if (a1 == TVU_MARK_START) {
        in_range = total = 0;
        memset(hist, 0, sizeof(hist));
        range_lo = a2;
        range_hi = a3;
        counted_vcpu = vcpu;
        counting = 1;
    } else if (a1 == TVU_MARK_STOP && counting && vcpu == counted_vcpu) {
        counting = 0;
        write_counts();
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_dir, sizeof(out_dir), "%s", argv[i] + 4);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
