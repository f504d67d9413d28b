"""virt-launcher's QEMU part for the KubeVirt stand-in: one VMI becomes one QEMU process.

``machine`` turns a VMI spec into a ``Domain`` and the exact QEMU argv (pure); ``volumes`` and
``isos`` resolve its volumes to host files (PVC files, Secret/ConfigMap and NoCloud ISOs);
``launcher.QemuLauncher`` runs the process and follows its state over ``qmp``; ``relay`` is the
per-connection guestfwd program; ``console`` attaches a terminal to the serial port.
"""
