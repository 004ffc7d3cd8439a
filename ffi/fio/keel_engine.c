/*
 * fio external ioengine on keel's C ABI: fio drives the keel volume engine
 * directly (WAL, group commit, flusher), no protocol in between.
 *
 *   fio --ioengine=external:ffi/fio/keel_engine.so --filename=/path/vol.keel \
 *       --size=1g --rw=randwrite --bs=4k --iodepth=32 ...
 *
 * The volume (PATH and PATH.extent) is created with the job's size if it
 * does not exist. Reads, writes, trims and fsync/fdatasync (a keel flush)
 * are queued asynchronously on one keel handle per fio thread; fio's
 * getevents polls keel and sleeps on keel_wait. Offsets and lengths must
 * be multiples of the volume's block size (4 KiB by default).
 *
 * Built against fio's own headers (fio does not install them): see
 * Makefile and README.md in this directory.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fio.h"
#include "optgroup.h"

#include "keel.h"

struct keel_data {
    keel_volume *v;
    keel_handle *h;
    uint32_t bs;
    struct io_u **events;
    keel_completion *comps;
    unsigned int queued;
};

static int keel_init(struct thread_data *td) {
    struct keel_data *d;
    if (td->io_ops_data) return 0; /* already set up by get_file_size */
    d = calloc(1, sizeof(*d));
    if (!d) return 1;
    d->events = calloc(td->o.iodepth, sizeof(struct io_u *));
    d->comps = calloc(td->o.iodepth, sizeof(keel_completion));
    if (!d->events || !d->comps) return 1;
    td->io_ops_data = d;
    return 0;
}

static int keel_open_file(struct thread_data *td, struct fio_file *f) {
    struct keel_data *d;
    if (!td->io_ops_data && keel_init(td)) return 1;
    d = td->io_ops_data;
    struct stat st;
    int rc;
    if (d->v) return 0; /* one volume per thread */
    if (stat(f->file_name, &st) == 0)
        rc = keel_volume_open(f->file_name, KEEL_BACKEND_AUTO, &d->v);
    else
        rc = keel_volume_create(f->file_name, td->o.size ? td->o.size : f->real_file_size, 4096,
                                KEEL_BACKEND_AUTO, &d->v);
    if (rc != KEEL_OK) {
        log_err("keel: %s: %s\n", f->file_name, keel_last_error());
        return 1;
    }
    keel_info info;
    keel_volume_info(d->v, &info);
    d->bs = info.block_size;
    f->real_file_size = info.size;
    fio_file_set_size_known(f);
    if (keel_handle_new(d->v, &d->h) != KEEL_OK) {
        log_err("keel: handle: %s\n", keel_last_error());
        return 1;
    }
    return 0;
}

/*
 * Called in fio's main process before the job forks (fio sizes files
 * first): create the volume if needed and read its size, then close it;
 * the job opens it again in open_file (threads do not survive a fork).
 */
static int keel_get_file_size(struct thread_data *td, struct fio_file *f) {
    keel_volume *v = NULL;
    struct stat st;
    int rc;
    if (td->io_ops_data && ((struct keel_data *)td->io_ops_data)->v) return 0;
    if (stat(f->file_name, &st) == 0)
        rc = keel_volume_open(f->file_name, KEEL_BACKEND_AUTO, &v);
    else
        rc = keel_volume_create(f->file_name, td->o.size ? td->o.size : f->real_file_size, 4096,
                                KEEL_BACKEND_AUTO, &v);
    if (rc != KEEL_OK) {
        log_err("keel: %s: %s\n", f->file_name, keel_last_error());
        return 1;
    }
    keel_info info;
    keel_volume_info(v, &info);
    f->real_file_size = info.size;
    fio_file_set_size_known(f);
    return keel_volume_close(v) == KEEL_OK ? 0 : 1;
}

static int keel_close_file(struct thread_data *td, struct fio_file *f) {
    (void)td;
    (void)f;
    return 0;
}

static enum fio_q_status keel_queue(struct thread_data *td, struct io_u *io_u) {
    struct keel_data *d = td->io_ops_data;
    uint64_t tag = (uint64_t)(uintptr_t)io_u;
    uint64_t lba = io_u->offset / d->bs;
    int rc;
    fio_ro_check(td, io_u);
    switch (io_u->ddir) {
    case DDIR_READ:
        rc = keel_submit_read(d->h, tag, lba, io_u->xfer_buf, io_u->xfer_buflen);
        break;
    case DDIR_WRITE:
        rc = keel_submit_write(d->h, tag, lba, io_u->xfer_buf, io_u->xfer_buflen, 0);
        break;
    case DDIR_TRIM:
        rc = keel_submit_trim(d->h, tag, lba, (uint32_t)(io_u->xfer_buflen / d->bs));
        break;
    case DDIR_SYNC:
    case DDIR_DATASYNC:
        rc = keel_submit_flush(d->h, tag);
        break;
    default:
        io_u->error = EINVAL;
        return FIO_Q_COMPLETED;
    }
    if (rc != KEEL_OK) {
        io_u->error = rc == KEEL_ERANGE || rc == KEEL_EINVAL ? EINVAL : EIO;
        return FIO_Q_COMPLETED;
    }
    d->queued++;
    return FIO_Q_QUEUED;
}

static int keel_getevents(struct thread_data *td, unsigned int min, unsigned int max,
                          const struct timespec *t) {
    struct keel_data *d = td->io_ops_data;
    unsigned int got = 0;
    (void)t;
    while (got < max) {
        int n = keel_poll(d->h, d->comps, (int)(max - got));
        if (n < 0) return n;
        for (int i = 0; i < n; i++) {
            struct io_u *io_u = (struct io_u *)(uintptr_t)d->comps[i].tag;
            io_u->error = d->comps[i].status == KEEL_OK ? 0 : EIO;
            d->events[got++] = io_u;
            d->queued--;
        }
        if (got >= min || d->queued == 0) break;
        if (n == 0 && keel_arm_notify(d->h)) keel_wait(d->h, 1000);
    }
    return (int)got;
}

static struct io_u *keel_event(struct thread_data *td, int event) {
    struct keel_data *d = td->io_ops_data;
    return d->events[event];
}

static void keel_cleanup(struct thread_data *td) {
    struct keel_data *d = td->io_ops_data;
    if (!d) return;
    if (d->h) keel_handle_free(d->h);
    if (d->v && keel_volume_close(d->v) != KEEL_OK) log_err("keel: close: %s\n", keel_last_error());
    free(d->events);
    free(d->comps);
    free(d);
    td->io_ops_data = NULL;
}

struct ioengine_ops ioengine = {
    .name = "keel",
    .version = FIO_IOOPS_VERSION,
    .flags = FIO_DISKLESSIO | FIO_NOEXTEND,
    .init = keel_init,
    .queue = keel_queue,
    .getevents = keel_getevents,
    .event = keel_event,
    .cleanup = keel_cleanup,
    .open_file = keel_open_file,
    .close_file = keel_close_file,
    .get_file_size = keel_get_file_size,
};
