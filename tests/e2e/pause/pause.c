/* The pod sandbox's process (what the kubelet's pause image runs): sleep until told to stop. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;)
        pause();
    return EXIT_SUCCESS;
}
