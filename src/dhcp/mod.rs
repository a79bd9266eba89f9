//! DHCP client (sans-IO state machine); filled in by the DHCP work.
