/* Calls every function of keel.h against libkeel_ffi; exits non-zero on the
 * first mismatch. Built and run by tests/c_abi.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "keel.h"

#define CHECK(c)                                                                      \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #c, \
                    keel_last_error());                                               \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *path = argv[1];
    keel_volume *v = NULL;
    CHECK(keel_volume_create(path, 16 << 20, 4096, KEEL_BACKEND_AUTO, &v) == KEEL_OK);
    keel_info info;
    CHECK(keel_volume_info(v, &info) == KEEL_OK);
    CHECK(info.size == 16 << 20 && info.block_size == 4096 && info.blocks == 4096);
    CHECK(info.max_write_blocks > 0);
    keel_handle *h = NULL;
    CHECK(keel_handle_new(v, &h) == KEEL_OK);
    CHECK(keel_notify_fd(h) >= 0);

    /* Async: 32 writes in flight, then a flush, then 32 reads. */
    static unsigned char w[32][4096], r[32][4096];
    for (int i = 0; i < 32; i++) {
        memset(w[i], 'a' + i % 26, 4096);
        CHECK(keel_submit_write(h, 100 + i, i * 3, w[i], 4096, 0) == KEEL_OK);
    }
    int got = 0;
    keel_completion c[16];
    while (got < 32) {
        int n = keel_poll(h, c, 16);
        CHECK(n >= 0);
        for (int i = 0; i < n; i++) CHECK(c[i].status == KEEL_OK && c[i].tag >= 100 && c[i].tag < 132);
        got += n;
        if (n == 0) CHECK(keel_wait(h, 100000) == KEEL_OK);
    }
    CHECK(keel_in_flight(h) == 0);
    CHECK(keel_submit_flush(h, 7) == KEEL_OK);
    for (;;) {
        int n = keel_poll(h, c, 16);
        CHECK(n >= 0);
        if (n == 1) { CHECK(c[0].tag == 7 && c[0].status == KEEL_OK); break; }
        if (keel_arm_notify(h)) keel_wait(h, 100000);
    }
    for (int i = 0; i < 32; i++) CHECK(keel_submit_read(h, 200 + i, i * 3, r[i], 4096) == KEEL_OK);
    /* A tag in flight cannot be reused. */
    CHECK(keel_submit_read(h, 200, 0, r[0], 4096) == KEEL_EINVAL);
    got = 0;
    while (got < 32) {
        int n = keel_poll(h, c, 16);
        CHECK(n >= 0);
        for (int i = 0; i < n; i++) CHECK(c[i].status == KEEL_OK);
        got += n;
        if (n == 0) keel_wait(h, 100000);
    }
    for (int i = 0; i < 32; i++) CHECK(memcmp(w[i], r[i], 4096) == 0);

    /* Blocking calls, trim, errors. */
    static unsigned char b[8192], z[8192];
    memset(b, 0x5a, sizeof b);
    CHECK(keel_write(h, 1000, b, sizeof b, 1) == KEEL_OK);
    memset(b, 0, sizeof b);
    CHECK(keel_read(h, 1000, b, sizeof b) == KEEL_OK);
    CHECK(b[0] == 0x5a && b[8191] == 0x5a);
    CHECK(keel_submit_trim(h, 9, 1000, 2) == KEEL_OK);
    while (keel_poll(h, c, 1) == 0) keel_wait(h, 100000);
    CHECK(c[0].tag == 9 && c[0].status == KEEL_OK);
    CHECK(keel_read(h, 1000, b, sizeof b) == KEEL_OK);
    memset(z, 0, sizeof z);
    CHECK(memcmp(b, z, sizeof b) == 0);
    CHECK(keel_flush(h) == KEEL_OK);
    CHECK(keel_read(h, 4095, b, 8192) == KEEL_ERANGE);
    CHECK(strlen(keel_last_error()) > 0);
    CHECK(keel_write(h, 0, b, 100, 0) == KEEL_EINVAL);
    CHECK(keel_submit_write(NULL, 1, 0, b, 4096, 0) == KEEL_EINVAL);
    CHECK(keel_poll(h, NULL, 4) == KEEL_EINVAL);
    CHECK(strcmp(keel_strerror(KEEL_ERANGE), "LBA range past the end of the volume") == 0);
    keel_handle_free(h);
    CHECK(keel_volume_close(v) == KEEL_OK);

    /* Reopen: the data is there. */
    CHECK(keel_volume_open(path, KEEL_BACKEND_STANDARD, &v) == KEEL_OK);
    CHECK(keel_handle_new(v, &h) == KEEL_OK);
    CHECK(keel_read(h, 3 * 5, r[0], 4096) == KEEL_OK);
    CHECK(memcmp(w[5], r[0], 4096) == 0);
    keel_handle_free(h);
    CHECK(keel_volume_close(v) == KEEL_OK);
    CHECK(keel_volume_open("/nonexistent/keel", 9, &v) == KEEL_EINVAL);
    CHECK(keel_volume_open(NULL, 0, &v) == KEEL_EINVAL);
    printf("keel C ABI: all checks passed\n");
    return 0;
}
