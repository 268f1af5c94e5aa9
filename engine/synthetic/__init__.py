"""Synthetic, patient-free data: chest-radiograph-like phantoms with lesion masks, the demo
studies and the demo teaching set. Shipped (the viewer's bench and self-test use demo_data);
needs neither torch nor a network."""
