/*
 * keel C ABI (libkeel_ffi.so): the volume engine of keel.
 *
 * A volume is two files, PATH (superblock + WAL) and PATH.extent. Open it,
 * make one handle per thread, submit operations (they return at once),
 * poll completions. Writes copy the caller's data at submit; a read fills
 * the caller's buffer when its completion is polled, so the buffer must
 * stay valid until then. Tags are the caller's; a tag must not be reused
 * while its operation is in flight on the same handle (UINT64_MAX is
 * reserved for the blocking calls). Free every handle before closing its
 * volume. Nothing here panics into C: internal errors return KEEL_EPANIC.
 *
 * Kept by hand; ffi/tests/c_abi.rs compiles a C program against it and
 * the library, calling every function.
 */
#ifndef KEEL_H
#define KEEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: 0 or negative. */
#define KEEL_OK 0
#define KEEL_EINVAL -1    /* null pointer, bad length, unknown backend, tag in use */
#define KEEL_ERANGE -2    /* LBA range past the end of the volume */
#define KEEL_ENOTVOL -3   /* not a keel volume */
#define KEEL_EVERSION -4  /* unsupported on-disk format version */
#define KEEL_ECORRUPT -5  /* corrupt metadata */
#define KEEL_ETRUNC -6    /* files shorter than the superblock says */
#define KEEL_EWALFULL -7  /* WAL stayed full past the admission bound */
#define KEEL_ECLOSED -8   /* volume closed */
#define KEEL_EFAILED -9   /* volume failed after an I/O error; reopen it */
#define KEEL_EBACKEND -10 /* I/O backend not compiled in or unusable */
#define KEEL_EIO -11      /* operating-system I/O error */
#define KEEL_EPANIC -12   /* internal error */

/* Backends. */
#define KEEL_BACKEND_STANDARD 0
#define KEEL_BACKEND_AUTO 1
#define KEEL_BACKEND_IO_URING 2

typedef struct KeelVolume keel_volume;
typedef struct KeelHandle keel_handle;

typedef struct keel_info {
    uint64_t size;             /* bytes */
    uint32_t block_size;       /* logical block size */
    uint64_t blocks;           /* capacity in blocks */
    uint32_t max_write_blocks; /* largest single write */
} keel_info;

typedef struct keel_completion {
    uint64_t tag;
    int status; /* KEEL_OK or a negative status */
} keel_completion;

int keel_volume_create(const char *path, uint64_t size, uint32_t block_size, int backend,
                       keel_volume **out);
int keel_volume_open(const char *path, int backend, keel_volume **out);
int keel_volume_info(const keel_volume *v, keel_info *out);
int keel_volume_close(keel_volume *v);

int keel_handle_new(keel_volume *v, keel_handle **out);
void keel_handle_free(keel_handle *h);

int keel_submit_read(keel_handle *h, uint64_t tag, uint64_t lba, void *buf, size_t len);
int keel_submit_write(keel_handle *h, uint64_t tag, uint64_t lba, const void *buf, size_t len,
                      int fua);
int keel_submit_flush(keel_handle *h, uint64_t tag);
int keel_submit_trim(keel_handle *h, uint64_t tag, uint64_t lba, uint32_t blocks);

/* Up to max completions into out; returns the count (0: none) or a status. */
int keel_poll(keel_handle *h, keel_completion *out, int max);
/* Sleep until a completion may be ready (timeout_us < 0: no timeout). */
int keel_wait(keel_handle *h, int64_t timeout_us);
int keel_in_flight(const keel_handle *h);
/* An eventfd readable after keel_arm_notify() when completions arrive. */
int keel_notify_fd(const keel_handle *h);
/* 1: armed; 0: completions already waiting, poll instead of sleeping. */
int keel_arm_notify(const keel_handle *h);

/* Blocking conveniences. */
int keel_read(keel_handle *h, uint64_t lba, void *buf, size_t len);
int keel_write(keel_handle *h, uint64_t lba, const void *buf, size_t len, int fua);
int keel_flush(keel_handle *h);

const char *keel_strerror(int status);
/* This thread's last error message (valid until its next failing call). */
const char *keel_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* KEEL_H */
