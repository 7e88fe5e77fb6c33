/*
 * A type-2 AppImage runtime: the ELF program in front of the squashfs image of an AppDir.
 *
 * Written for this project from the AppImage specification (type 2 image format): the file is
 * an ELF executable with "AI\x02" at offset 8 (stamped by the build script), the squashfs image
 * starts where the ELF ends, and running the file mounts the image and runs its AppRun with
 * APPIMAGE, APPDIR, ARGV0 and OWD set. Where FUSE is missing (containers, hosts without
 * fusermount3) it extracts the image to a temporary directory, runs AppRun from there and
 * removes the directory afterwards, instead of failing.
 *
 * The image is mounted with libsquashfuse's low-level FUSE operations over libfuse3; both, and
 * the decompressors, are linked statically (see the README for libfuse's LGPL terms).
 *
 * Options (only as the first argument; everything else goes to AppRun unchanged):
 *   --appimage-help             this list
 *   --appimage-version          the runtime's version
 *   --appimage-offset           the squashfs image's offset in the file (the ELF's end)
 *   --appimage-extract [GLOB]   extract the image (or the paths matching GLOB) to ./squashfs-root
 *   --appimage-extract-and-run  extract to a temporary directory, run AppRun, remove it
 *   --appimage-mount            mount the image, print the mount point, keep it until killed
 *   --appimage-updateinformation  print the .upd_info section
 * Environment: APPIMAGE_EXTRACT_AND_RUN=1 always extracts; NO_CLEANUP=1 keeps the extracted
 * directory; TARGET_APPIMAGE=PATH uses the image of another AppImage file.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 32

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <squashfuse/ll.h>

#ifndef RUNTIME_VERSION
#define RUNTIME_VERSION "1"
#endif

/* Sections the specification names: update information and a signature, empty here. */
__attribute__((section(".upd_info"), used)) static char upd_info[1024];
__attribute__((section(".sha256_sig"), used)) static char sha256_sig[1024];
__attribute__((section(".sig_key"), used)) static char sig_key[8192];

static const char *prog = "AppImage";

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* -- where the image starts ------------------------------------------------------------- */

static int pread_full(int fd, void *buf, size_t n, off_t at) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, at + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The end of the ELF file: the furthest of the section header table, the program header table
 * and every section that occupies bytes in the file. Returns -1 if the file is no 64-bit ELF. */
static long long elf_end(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    Elf64_Ehdr eh;
    long long end = -1;
    if (pread_full(fd, &eh, sizeof eh, 0) != 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
        eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum > 4096)
        goto out;
    end = (long long)(eh.e_shoff + (Elf64_Off)eh.e_shnum * eh.e_shentsize);
    long long ph = (long long)(eh.e_phoff + (Elf64_Off)eh.e_phnum * eh.e_phentsize);
    if (ph > end)
        end = ph;
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        Elf64_Shdr sh;
        if (pread_full(fd, &sh, sizeof sh, (off_t)(eh.e_shoff + (Elf64_Off)i * sizeof sh)) != 0) {
            end = -1;
            goto out;
        }
        if (sh.sh_type != SHT_NOBITS && (long long)(sh.sh_offset + sh.sh_size) > end)
            end = (long long)(sh.sh_offset + sh.sh_size);
    }
out:
    close(fd);
    return end;
}

/* libsquashfuse keeps 1 data block and 3 fragment blocks decompressed. Starting an app loads
 * many libraries by page faults that hop between files and blocks, which would decompress the
 * same blocks over and over: keep the last 64 of each (8 MB with 128 KiB blocks). */
static sqfs_err widen_caches(sqfs *fs) {
    sqfs_cache_destroy(&fs->data_cache);
    sqfs_cache_destroy(&fs->frag_cache);
    if (sqfs_block_cache_init(&fs->data_cache, 64) != SQFS_OK ||
        sqfs_block_cache_init(&fs->frag_cache, 64) != SQFS_OK)
        return SQFS_ERR;
    return SQFS_OK;
}

/* -- extraction ----------------------------------------------------------------------- */

static int mkdirs(char *path, mode_t mode) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int r = mkdir(path, mode);
        *p = '/';
        if (r != 0 && errno != EEXIST)
            return -1;
    }
    if (mkdir(path, mode) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static int write_file(sqfs *fs, sqfs_inode *inode, const char *dest, char *buf, size_t bufsize) {
    unlink(dest);
    int out = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, inode->base.mode & 07777);
    if (out < 0)
        return -1;
    uint64_t size = inode->xtra.reg.file_size;
    for (uint64_t at = 0; at < size;) {
        sqfs_off_t n = (sqfs_off_t)(size - at < bufsize ? size - at : bufsize);
        if (sqfs_read_range(fs, inode, (sqfs_off_t)at, &n, buf) != SQFS_OK || n <= 0) {
            errno = EIO;
            close(out);
            return -1;
        }
        for (sqfs_off_t w = 0; w < n;) {
            ssize_t r = write(out, buf + w, (size_t)(n - w));
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                close(out);
                return -1;
            }
            w += r;
        }
        at += (uint64_t)n;
    }
    return close(out);
}

/* Extracts the image (or the entries whose path matches `pattern`) under `dest`. */
static int extract(const char *image, long long offset, const char *dest, const char *pattern,
                   int verbose) {
    sqfs fs;
    if (sqfs_open_image(&fs, image, (size_t)offset) != SQFS_OK || widen_caches(&fs) != SQFS_OK) {
        fprintf(stderr, "%s: %s holds no squashfs image at offset %lld\n", prog, image, offset);
        return -1;
    }
    size_t bufsize = 1 << 20;
    char *buf = malloc(bufsize);
    char path[PATH_MAX], target[PATH_MAX];
    sqfs_traverse trv;
    sqfs_err err = sqfs_traverse_open(&trv, &fs, sqfs_inode_root(&fs));
    int rc = (buf == NULL || err != SQFS_OK || mkdirs(strcpy(path, dest), 0755) != 0) ? -1 : 0;
    while (rc == 0 && sqfs_traverse_next(&trv, &err)) {
        if (trv.dir_end)
            continue;
        if (pattern && fnmatch(pattern, trv.path, 0) != 0)
            continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dest, trv.path) >= sizeof path) {
            errno = ENAMETOOLONG;
            rc = -1;
            break;
        }
        if (pattern) { /* only matches are extracted: make their parents */
            char *slash = strrchr(path, '/');
            *slash = '\0';
            rc = mkdirs(path, 0755);
            *slash = '/';
            if (rc != 0)
                break;
        }
        sqfs_inode inode;
        if (sqfs_inode_get(&fs, &inode, trv.entry.inode) != SQFS_OK) {
            errno = EIO;
            rc = -1;
            break;
        }
        if (verbose)
            printf("%s\n", path);
        switch (inode.base.mode & S_IFMT) {
        case S_IFDIR:
            if (mkdir(path, (inode.base.mode & 07777) | 0700) != 0 && errno != EEXIST)
                rc = -1;
            break;
        case S_IFREG:
            rc = write_file(&fs, &inode, path, buf, bufsize);
            break;
        case S_IFLNK: {
            size_t n = sizeof target;
            if (sqfs_readlink(&fs, &inode, target, &n) != SQFS_OK) {
                errno = EIO;
                rc = -1;
                break;
            }
            unlink(path);
            rc = symlink(target, path);
            break;
        }
        default: /* devices, FIFOs and sockets have no place in an AppDir */
            break;
        }
    }
    if (rc != 0)
        fprintf(stderr, "%s: cannot extract %s: %s\n", prog, path, strerror(errno));
    else if (err != SQFS_OK) {
        fprintf(stderr, "%s: the image is damaged (squashfs error %d)\n", prog, (int)err);
        rc = -1;
    }
    sqfs_traverse_close(&trv);
    sqfs_destroy(&fs);
    free(buf);
    return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

/* -- running AppRun -------------------------------------------------------------------- */

static void set_env(const char *appimage, const char *appdir, const char *argv0) {
    char owd[PATH_MAX];
    setenv("APPIMAGE", appimage, 1);
    setenv("APPDIR", appdir, 1);
    setenv("ARGV0", argv0, 1);
    if (getcwd(owd, sizeof owd))
        setenv("OWD", owd, 1);
}

static void exec_apprun(const char *appdir, char **argv) {
    char apprun[PATH_MAX];
    snprintf(apprun, sizeof apprun, "%s/AppRun", appdir);
    argv[0] = apprun;
    execv(apprun, argv);
    fprintf(stderr, "%s: cannot run %s: %s\n", prog, apprun, strerror(errno));
}

static const char *tmpdir(void) {
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

static pid_t child_pid;

static void forward(int sig) {
    if (child_pid > 0)
        kill(child_pid, sig);
}

/* Extracts to a temporary directory, runs AppRun there and removes the directory afterwards. */
static int extract_and_run(const char *self, long long offset, char **argv) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/appimage_extracted_XXXXXX", tmpdir());
    if (!mkdtemp(dir))
        die(1, "cannot make a directory in %s to extract into: %s (set TMPDIR to a writable "
               "directory)", tmpdir(), strerror(errno));
    if (extract(self, offset, dir, NULL, 0) != 0) {
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        die(1, "extracting to %s failed (is %s full? set TMPDIR to another directory)", dir,
            tmpdir());
    }
    set_env(self, dir, argv[0]);
    const char *keep = getenv("NO_CLEANUP");
    if (keep && strcmp(keep, "1") == 0) {
        exec_apprun(dir, argv);
        return 127;
    }
    child_pid = fork();
    if (child_pid < 0)
        die(1, "fork: %s", strerror(errno));
    if (child_pid == 0) {
        exec_apprun(dir, argv);
        _exit(127);
    }
    /* The terminal's Ctrl-C reaches AppRun directly; TERM and HUP sent to us are passed on. */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGTERM, forward);
    signal(SIGHUP, forward);
    int status = 0;
    while (waitpid(child_pid, &status, 0) < 0 && errno == EINTR)
        ;
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* -- mounting ------------------------------------------------------------------------- */

/* Why FUSE cannot be used here, or NULL if it looks usable. */
static const char *fuse_missing(void) {
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? "/dev/fuse does not exist" : "/dev/fuse cannot be opened";
    struct stat st;
    int chr = fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
    close(fd);
    if (!chr)
        return "/dev/fuse is not a device";
    if (geteuid() == 0)
        return NULL; /* root mounts directly */
    const char *path = getenv("PATH");
    char buf[PATH_MAX];
    if (access("/usr/bin/fusermount3", X_OK) == 0 || access("/bin/fusermount3", X_OK) == 0)
        return NULL;
    for (const char *p = path ? path : ""; *p;) {
        const char *colon = strchrnul(p, ':');
        snprintf(buf, sizeof buf, "%.*s/fusermount3", (int)(colon - p), p);
        if (access(buf, X_OK) == 0)
            return NULL;
        p = *colon ? colon + 1 : colon;
    }
    return "fusermount3 is not installed (the package is fuse3)";
}

static volatile sig_atomic_t stop_serving;

static void on_stop(int sig) {
    (void)sig;
    stop_serving = 1;
}

/* The FUSE server: serves the image at `mnt` until every holder of the keepalive pipe's write
 * end (AppRun and all it starts) has exited, then unmounts. Reports the mount's success as
 * one byte on `ready` (0, or an errno). Never returns. */
static void serve(const char *image, long long offset, const char *mnt, int ready, int keepalive) {
    struct fuse_lowlevel_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.getattr = sqfs_ll_op_getattr;
    ops.opendir = sqfs_ll_op_opendir;
    ops.releasedir = sqfs_ll_op_releasedir;
    ops.readdir = sqfs_ll_op_readdir;
    ops.lookup = sqfs_ll_op_lookup;
    ops.open = sqfs_ll_op_open;
    ops.create = sqfs_ll_op_create;
    ops.release = sqfs_ll_op_release;
    ops.read = sqfs_ll_op_read;
    ops.readlink = sqfs_ll_op_readlink;
    ops.listxattr = sqfs_ll_op_listxattr;
    ops.getxattr = sqfs_ll_op_getxattr;
    ops.forget = sqfs_ll_op_forget;

    char opts[PATH_MAX + 64];
    snprintf(opts, sizeof opts, "ro,nodev,nosuid,subtype=appimage,fsname=%s", image);
    for (char *c = opts + 40; *c; c++) /* a comma or backslash in the path would end it */
        if (*c == ',' || *c == '\\')
            *c = '_';
    char *args_v[] = {(char *)prog, "-o", opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, args_v);
    unsigned char status = 0;
    sqfs_ll *ll = sqfs_ll_open(image, (size_t)offset);
    sqfs_ll_chan ch;
    if (ll == NULL || widen_caches(&ll->fs) != SQFS_OK)
        status = EINVAL;
    else if (sqfs_ll_mount(&ch, mnt, &args, &ops, sizeof ops, ll) != SQFS_OK)
        status = errno ? (unsigned char)errno : EIO;
    if (write(ready, &status, 1) != 1 || status != 0)
        _exit(1);
    close(ready);

    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0), dup2(null, 1), dup2(null, 2);
        close(null);
    }
    if (chdir("/") != 0)
        _exit(1);
    struct sigaction sa = {.sa_handler = on_stop};
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    struct fuse_session *se = ch.session;
    struct fuse_buf buf = {0};
    struct pollfd fds[2] = {{fuse_session_fd(se), POLLIN, 0}, {keepalive, POLLIN, 0}};
    while (!stop_serving && !fuse_session_exited(se)) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents) { /* the pipe only ever closes: AppRun and its children are gone */
            char c;
            if (read(keepalive, &c, 1) <= 0)
                break;
        }
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL))
            break;
        if (fds[0].revents & POLLIN) {
            int r = fuse_session_receive_buf(se, &buf);
            if (r == -EINTR || r == -EAGAIN)
                continue;
            if (r <= 0)
                break;
            fuse_session_process_buf(se, &buf);
        }
    }
    free(buf.mem);
    sqfs_ll_unmount(&ch, mnt);
    sqfs_ll_destroy(ll);
    rmdir(mnt);
    _exit(0);
}

/* Mounts the image in a detached server process. Returns 0 with the mount point in `mnt` and
 * the keepalive pipe's write end in *keep, or an errno. */
static int mount_image(const char *self, long long offset, char *mnt, size_t mntsize, int *keep) {
    const char *base = strrchr(self, '/');
    base = base ? base + 1 : self;
    snprintf(mnt, mntsize, "%s/.mount_%.6sXXXXXX", tmpdir(), base);
    if (!mkdtemp(mnt))
        return errno;
    int ready[2], keepalive[2];
    if (pipe2(ready, O_CLOEXEC) != 0 || pipe(keepalive) != 0)
        return errno;
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0) { /* detach the server from the terminal and from AppRun's process tree */
        close(ready[0]);
        close(keepalive[1]);
        setsid();
        pid_t server = fork();
        if (server != 0)
            _exit(server < 0);
        serve(self, offset, mnt, ready[1], keepalive[0]);
    }
    close(ready[1]);
    close(keepalive[0]);
    waitpid(pid, NULL, 0);
    unsigned char status = EIO;
    ssize_t r;
    while ((r = read(ready[0], &status, 1)) < 0 && errno == EINTR)
        ;
    close(ready[0]);
    if (r != 1 || status != 0) {
        close(keepalive[1]);
        rmdir(mnt);
        return status ? status : EIO;
    }
    *keep = keepalive[1]; /* inherited by AppRun (no close-on-exec): the mount lives with it */
    return 0;
}

static int mount_and_wait(const char *self, long long offset) {
    char mnt[PATH_MAX];
    int keep;
    const char *why = fuse_missing();
    if (why)
        die(1, "cannot mount the image: %s", why);
    int err = mount_image(self, offset, mnt, sizeof mnt, &keep);
    if (err)
        die(1, "cannot mount the image at %s: %s", mnt, strerror(err));
    printf("%s\n", mnt);
    fflush(stdout);
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    while (!stop_serving)
        pause();
    return 0;
}

/* -- main ------------------------------------------------------------------------------ */

static void usage(void) {
    printf("AppImage runtime %s. Options (as the first argument):\n"
           "  --appimage-help               this list\n"
           "  --appimage-version            the runtime's version\n"
           "  --appimage-offset             where the squashfs image starts in the file\n"
           "  --appimage-extract [GLOB]     extract the image (or matching paths) to "
           "./squashfs-root\n"
           "  --appimage-extract-and-run    run from a temporary extraction, removed after\n"
           "  --appimage-mount              mount, print the mount point, wait until killed\n"
           "  --appimage-updateinformation  print the embedded update information\n"
           "Environment: APPIMAGE_EXTRACT_AND_RUN=1 always extracts; NO_CLEANUP=1 keeps the\n"
           "extraction; TARGET_APPIMAGE=PATH uses another AppImage's image.\n",
           RUNTIME_VERSION);
}

int main(int argc, char **argv) {
    char self[PATH_MAX];
    const char *target = getenv("TARGET_APPIMAGE");
    if (target && *target) {
        if (!realpath(target, self))
            die(1, "TARGET_APPIMAGE=%s: %s", target, strerror(errno));
    } else {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n < 0)
            die(1, "cannot find this program's own file through /proc/self/exe: %s (is /proc "
                   "mounted?)", strerror(errno));
        self[n] = '\0';
    }
    const char *base = strrchr(self, '/');
    prog = base ? base + 1 : self;
    long long offset = elf_end(self);
    if (offset <= 0)
        die(1, "%s is not a 64-bit ELF file: cannot find its squashfs image", self);

    const char *opt = argc > 1 ? argv[1] : "";
    if (strncmp(opt, "--appimage-", 11) == 0) {
        if (strcmp(opt, "--appimage-offset") == 0) {
            printf("%lld\n", offset);
            return 0;
        }
        if (strcmp(opt, "--appimage-version") == 0) {
            printf("AppImage runtime %s (type 2, squashfuse over libfuse3)\n", RUNTIME_VERSION);
            return 0;
        }
        if (strcmp(opt, "--appimage-help") == 0) {
            usage();
            return 0;
        }
        if (strcmp(opt, "--appimage-updateinformation") == 0) {
            printf("%.*s\n", (int)sizeof upd_info, upd_info);
            return 0;
        }
        if (strcmp(opt, "--appimage-signature") == 0) {
            printf("%.*s\n", (int)sizeof sha256_sig, sha256_sig);
            return 0;
        }
        if (strcmp(opt, "--appimage-extract") == 0) {
            char dest[PATH_MAX];
            if (!getcwd(dest, sizeof dest - 16))
                die(1, "cannot read the working directory: %s", strerror(errno));
            strcat(dest, "/squashfs-root");
            return extract(self, offset, dest, argc > 2 ? argv[2] : NULL, 1) == 0 ? 0 : 1;
        }
        if (strcmp(opt, "--appimage-extract-and-run") == 0) {
            argv[1] = argv[0];
            return extract_and_run(self, offset, argv + 1);
        }
        if (strcmp(opt, "--appimage-mount") == 0)
            return mount_and_wait(self, offset);
        (void)sig_key;
        die(2, "unknown option %s (--appimage-help lists them)", opt);
    }

    const char *ear = getenv("APPIMAGE_EXTRACT_AND_RUN");
    if (ear && strcmp(ear, "1") == 0)
        return extract_and_run(self, offset, argv);

    const char *why = fuse_missing();
    char mnt[PATH_MAX];
    int keep = -1;
    int err = why ? 0 : mount_image(self, offset, mnt, sizeof mnt, &keep);
    if (why || err) {
        fprintf(stderr,
                "%s: cannot mount the image (%s); running it from a temporary extraction "
                "instead, which starts slower. Install fuse3 to mount it, or set "
                "APPIMAGE_EXTRACT_AND_RUN=1 to choose extraction and skip this message.\n",
                prog, why ? why : strerror(err));
        return extract_and_run(self, offset, argv);
    }
    set_env(self, mnt, argv[0]);
    exec_apprun(mnt, argv);
    return 127;
}
