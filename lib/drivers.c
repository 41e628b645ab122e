/* SPDX-License-Identifier: MIT */
/*
 * drivers.c - the driver table: the one list of every block driver, in probe-tie order.  Adding a
 * driver is one extern line and one table line here; nothing else in lib/ names a driver, except the
 * table of known format magics in lib/probe.c (a new format's magic moves there from "no driver yet").
 */
#include "block.h"

#include <string.h>

extern const BlockDriver bdrv_file;
extern const BlockDriver bdrv_memory;
extern const BlockDriver bdrv_blkdebug;
extern const BlockDriver bdrv_window;
extern const BlockDriver bdrv_raw;
extern const BlockDriver bdrv_qcow2;
extern const BlockDriver bdrv_vdi;
extern const BlockDriver bdrv_vpc;
extern const BlockDriver bdrv_vhdx;
extern const BlockDriver bdrv_vmdk;
extern const BlockDriver bdrv_qed;
extern const BlockDriver bdrv_qcow;
extern const BlockDriver bdrv_parallels;
extern const BlockDriver bdrv_ewf;
extern const BlockDriver bdrv_splitraw;
extern const BlockDriver bdrv_aff;
extern const BlockDriver bdrv_cloop;
extern const BlockDriver bdrv_bochs;
extern const BlockDriver bdrv_dmg;
extern const BlockDriver bdrv_luks;

static const BlockDriver *const driver_table[] = {
    &bdrv_file,
    &bdrv_memory,
    &bdrv_blkdebug,
    &bdrv_window,
    &bdrv_qcow2,
    &bdrv_vdi,
    &bdrv_vpc,
    &bdrv_vhdx,
    &bdrv_vmdk,
    &bdrv_qed,
    &bdrv_qcow,
    &bdrv_parallels,
    &bdrv_ewf,
    &bdrv_splitraw,
    &bdrv_aff,
    &bdrv_cloop,
    &bdrv_bochs,
    &bdrv_dmg,
    &bdrv_luks,
    &bdrv_raw,
    NULL
};

const BlockDriver *const *bdrv_driver_list(void)
{
    return driver_table;
}

const BlockDriver *bdrv_find_driver(const char *name)
{
    if (!name)
        return NULL;
    for (const BlockDriver *const *d = driver_table; *d; d++)
        if (strcmp((*d)->name, name) == 0)
            return *d;
    return NULL;
}
