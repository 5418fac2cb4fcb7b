"""Optional integrations, imported on demand: ``dynnorm.integrations.mmengine`` (OpenMMLab) and
``dynnorm.integrations.lightning`` (Lightning). ``import dynnorm`` never imports them."""
